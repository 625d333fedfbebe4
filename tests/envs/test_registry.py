"""Registry, spec validation and `omnipolicy tasks`."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from omnipolicy.envs import DEFAULT_SUITE, TaskSpec, get_task, list_tasks, register_task
from omnipolicy.envs.registry import bounded_action, load_scores, tasks_command, vector


def test_default_suite_is_the_issue_suite() -> None:
    assert sorted(DEFAULT_SUITE) == sorted(
        ["classic/cartpole-v1", "classic/acrobot-v1", "classic/mountaincar-v0", "classic/pendulum-v1",
         "atari/pong", "atari/breakout",
         "mujoco/inverted-pendulum-v5", "mujoco/inverted-double-pendulum-v5", "mujoco/reacher-v5",
         "dmc/cartpole-balance", "dmc/cartpole-swingup", "dmc/point_mass-easy", "dmc/reacher-easy"]
        + [f"metaworld/{n}-v3" for n in ("reach", "push", "pick-place", "door-open", "drawer-open", "drawer-close",
                                         "button-press-topdown", "peg-insert-side", "window-open", "window-close")]
    )  # fmt: skip


def test_scores_come_from_the_measured_file() -> None:
    scores = load_scores()
    for spec in list_tasks():
        entry = scores[spec.scores_from or spec.id]
        assert spec.random_score == entry["random"]["return_mean"]
        assert spec.expert_score == entry["expert"]["return_mean"]
        assert entry["expert"]["episodes"] >= 20 and entry["random"]["episodes"] >= 20
        assert spec.expert_score > spec.random_score
        if spec.has_success:
            assert spec.expert_success >= 0.9, spec.id
        assert math.isclose(spec.normalize(spec.random_score), 0.0, abs_tol=1e-9)
        assert math.isclose(spec.normalize(spec.expert_score), 100.0)


def test_unmeasured_task_refuses_to_normalise() -> None:
    spec = replace(get_task("classic/cartpole-v1"), random_score=math.nan)
    with pytest.raises(ValueError, match=r"no measured scores; run scripts/measure_experts.py --tasks classic/cartpole-v1"):
        spec.normalize(1.0)


def test_spec_validation_names_the_problem() -> None:
    base = get_task("classic/cartpole-v1")
    with pytest.raises(ValueError, match=r"unknown domain 'gym'; expected one of \['classic', 'atari'"):
        replace(base, domain="gym")
    with pytest.raises(ValueError, match=r"Task id 'mujoco/x' must start with its domain, 'classic/'"):
        replace(base, id="mujoco/x")
    with pytest.raises(ValueError, match=r"expected a 'module:attr' path, got 'nocolon'"):
        replace(base, expert_entry_point="nocolon")


def test_register_task_refuses_duplicates() -> None:
    decorator = register_task(
        "classic/cartpole-v1",
        domain="classic",
        observation=(vector("state", 4),),
        action=bounded_action(-1.0, 1.0, 1),
        max_steps=10,
        instruction="x",
        expert="m:a",
    )
    with pytest.raises(ValueError, match=r"Task 'classic/cartpole-v1' is already registered"):
        decorator(lambda spec, render_mode=None: None)
    assert isinstance(get_task("classic/cartpole-v1"), TaskSpec)


def test_tasks_command_lists_every_task(capsys) -> None:
    tasks_command([], prog="omnipolicy tasks")
    out = capsys.readouterr().out
    for spec in list_tasks():
        assert spec.id in out
    assert "discrete(6)" in out and "image 84x84x3" in out
    assert "state (39,) + to_object (3,) + to_goal (3,) + instruction text" in out
    tasks_command(["--domain", "metaworld", "--json"], prog="omnipolicy tasks")
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 10 and all(r["has_success"] and r["expert_success"] >= 0.9 for r in rows)
    assert all(r["teacher"] == r["expert"] for r in rows)  # the expert demonstrates where no teacher is named
    tasks_command(["--domain", "atari", "--json"], prog="omnipolicy tasks")
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["atari/pong"]["teacher"] == "omnipolicy.envs.experts.atari:PongTracker"
    assert rows["atari/pong"]["expert"] == "omnipolicy.envs.experts.atari:PongExpert"
