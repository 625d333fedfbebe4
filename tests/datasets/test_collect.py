"""omnipolicy collect: appends, continues, filters like Gato, and workers give the same episodes as in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omnipolicy.datasets import EpisodeStore
from omnipolicy.datasets.collect import collect, collect_command, perturb, rollout, task_path
from omnipolicy.tokenizers import FieldSpec

pytest.importorskip("gymnasium")


def test_collect_appends_and_a_rerun_continues(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = collect(["classic/cartpole-v1", "classic/mountaincar-v0"], 3, tmp_path, workers=0, progress=False)
    assert {t: s["new"] for t, s in first.items()} == {"classic/cartpole-v1": 3, "classic/mountaincar-v0": 3}
    collect_command(["--task", "classic/cartpole-v1", "--task", "classic/mountaincar-v0", "--episodes", "5",
                     "--out", str(tmp_path), "--workers", "0"], prog="omnipolicy collect")
    out = capsys.readouterr().out
    assert "classic/cartpole-v1" in out and "5 episodes (+2, 0 filtered)" in out
    for tid in ("classic/cartpole-v1", "classic/mountaincar-v0"):
        store = EpisodeStore(task_path(tmp_path, tid))
        assert store.task_ids == [tid] and store.num_episodes == 5 and store.seeds(tid) == set(range(5))
        assert store.instruction(tid).endswith(".")
    assert np.all(EpisodeStore(task_path(tmp_path, "classic/mountaincar-v0")).returns() > -200)  # reached the flag
    again = collect(["classic/cartpole-v1"], 5, tmp_path, workers=0, progress=False)
    assert again["classic/cartpole-v1"]["new"] == 0 and again["classic/cartpole-v1"]["steps"] == 0


def test_workers_give_the_same_episodes_as_in_process(tmp_path: Path) -> None:
    collect(["classic/acrobot-v1"], 4, tmp_path / "inline", workers=0, progress=False)
    collect(["classic/acrobot-v1"], 4, tmp_path / "pool", workers=2, progress=False)
    a = EpisodeStore(task_path(tmp_path / "inline", "classic/acrobot-v1"))
    b = EpisodeStore(task_path(tmp_path / "pool", "classic/acrobot-v1"))
    by_seed = {b.load_episode(i).seed: b.load_episode(i) for i in range(b.num_episodes)}
    assert set(by_seed) == set(range(4))
    for i in range(a.num_episodes):
        x = a.load_episode(i)
        y = by_seed[x.seed]
        np.testing.assert_array_equal(x.observations["state"], y.observations["state"])
        np.testing.assert_array_equal(x.actions, y.actions)


def test_episodes_are_stored_in_seed_order_whatever_order_they_finish_in(tmp_path: Path) -> None:
    """Workers finish episodes out of order; the store gets them by seed, so episode indices (and the held-out
    share and training draws made from them) do not depend on scheduling."""
    from omnipolicy.datasets.collect import _CollectionRun, _open_tasks, _worker_rollout

    tid = "classic/acrobot-v1"
    tasks = _open_tasks([tid], 3, tmp_path, 0, None, 1.0)
    run = _CollectionRun(tasks, None, 0.0, {tid: 0.0}, {tid: 20}, 3, progress=False)
    jobs = [run.next_job() for _ in range(3)]
    assert [j[1] for j in jobs] == [0, 1, 2] and run.next_job() is None
    done = {job[1]: _worker_rollout(*job)[0] for job in jobs}
    store = tasks[tid].store
    run.accept(done[2])
    run.flush()
    assert store.num_episodes == 0  # seeds 0 and 1 still in flight
    run.accept(done[0])
    run.flush()
    store.refresh()
    assert [store.load_episode(i).seed for i in range(store.num_episodes)] == [0]
    run.accept(done[1])
    run.flush()
    store.refresh()
    assert [store.load_episode(i).seed for i in range(store.num_episodes)] == [0, 1, 2]
    store.close()


def test_gato_filter_keeps_only_near_expert_episodes(tmp_path: Path) -> None:
    from omnipolicy.envs import get_task

    task = get_task("classic/pendulum-v1")
    fraction = 0.95
    threshold = task.random_score + fraction * (task.expert_score - task.random_score)
    first = collect([task.id], 6, tmp_path, workers=0, seed=0, filter_expert_fraction=fraction, progress=False)
    store = EpisodeStore(task_path(tmp_path, task.id))
    assert store.num_episodes == 6 and np.all(store.returns() >= threshold)
    rejected = store.rejected_seeds(task.id)
    assert len(rejected) == first[task.id]["rejected"] > 0  # the pendulum expert sometimes needs a second swing
    assert not rejected & store.seeds(task.id)
    second = collect([task.id], 9, tmp_path, workers=0, seed=0, filter_expert_fraction=fraction, progress=False)
    store.refresh()
    assert store.num_episodes == 9 and np.all(store.returns() >= threshold)
    # rejected seeds are remembered, not rolled again: every rollout of the rerun is a new seed
    assert second[task.id]["steps"] == task.max_steps * (second[task.id]["new"] + second[task.id]["rejected"])
    assert len(store.rejected_seeds(task.id)) == len(rejected) + second[task.id]["rejected"]
    with pytest.raises(ValueError, match=r"filter_expert_fraction must be in \[0, 1.5\]"):
        collect([task.id], 1, tmp_path, workers=0, filter_expert_fraction=3.0, progress=False)
    with pytest.raises(KeyError):
        collect(["classic/no-such-task"], 1, tmp_path, workers=0, progress=False)


class _Recording:
    """Wraps an env and records the actions it was given."""

    def __init__(self, env) -> None:
        self.env, self.executed = env, []

    def reset(self, **kw):
        return self.env.reset(**kw)

    def step(self, action):
        self.executed.append(np.array(action))
        return self.env.step(action)

    def __getattr__(self, name):
        return getattr(self.env, name)


@pytest.mark.parametrize("task_id", ["classic/pendulum-v1", "classic/cartpole-v1"])
def test_dart_noise_perturbs_what_the_env_executes_but_records_the_experts_actions(task_id: str) -> None:
    from omnipolicy.envs import get_task, make_env, make_expert

    task = get_task(task_id)
    env, expert = _Recording(make_env(task_id, seed=0)), make_expert(task_id, seed=0)
    ep = rollout(env, expert, task, seed=3, action_noise=0.3)
    executed = np.array(env.executed)
    assert executed.shape == ep.actions.shape
    changed = np.any(executed != ep.actions, axis=tuple(range(1, executed.ndim)))
    spec = task.timestep.action
    if spec.kind == "discrete":
        assert 0.05 < changed.mean() < 0.3  # a random action with probability 0.3 (half of them the same one)
        assert set(np.unique(executed)) <= set(range(spec.n))
    else:
        assert changed.mean() > 0.9 and (executed >= spec.low[0]).all() and (executed <= spec.high[0]).all()
    clean_env = _Recording(make_env(task_id, seed=0))
    clean = rollout(clean_env, make_expert(task_id, seed=0), task, seed=3)
    np.testing.assert_array_equal(np.array(clean_env.executed), clean.actions)  # no noise: executed = recorded
    again = rollout(_Recording(make_env(task_id, seed=0)), make_expert(task_id, seed=0), task, seed=3, action_noise=0.3)
    np.testing.assert_array_equal(again.actions, ep.actions)  # the noise is seeded by the episode seed


def test_perturb_clips_to_the_bounds_and_bad_noise_is_refused(tmp_path: Path) -> None:
    spec = FieldSpec("action", "continuous", (2,), "float32", low=(-1.0, 0.0), high=(1.0, 2.0))
    rng = np.random.default_rng(0)
    out = np.array([perturb(np.array([1.0, 1.0], np.float32), spec, 0.5, rng) for _ in range(2000)])
    assert out.dtype == np.float32 and (out[:, 0] <= 1.0).all() and (out[:, 1] >= 0.0).all() and (out[:, 1] <= 2.0).all()
    assert abs(out[:, 1].std() - 0.5) < 0.05  # 0.5 half-ranges of a [0, 2] range
    with pytest.raises(ValueError, match=r"action_noise must be in \[0, 1\].*'classic/cartpole-v1': 1.5"):
        collect(["classic/cartpole-v1"], 1, tmp_path, workers=0, action_noise={"classic/cartpole-v1": 1.5})


def test_max_steps_caps_episodes_as_truncated(tmp_path: Path) -> None:
    summary = collect(["classic/cartpole-v1"], 3, tmp_path, workers=0, max_steps=7, progress=False)
    store = EpisodeStore(task_path(tmp_path, "classic/cartpole-v1"))
    assert summary["classic/cartpole-v1"]["steps"] == 21
    for i in range(3):
        ep = store.load_episode(i)
        assert len(ep.actions) == 7 and not ep.terminated
    with pytest.raises(ValueError, match=r"max_steps must be an int >= 1 .*'classic/cartpole-v1': 0"):
        collect(["classic/cartpole-v1"], 3, tmp_path, workers=0, max_steps=0)


def test_max_steps_per_task(tmp_path: Path) -> None:
    tasks = ["classic/cartpole-v1", "classic/acrobot-v1"]
    summary = collect(tasks, 2, tmp_path, workers=0, max_steps={"classic/cartpole-v1": 5}, progress=False)
    assert summary["classic/cartpole-v1"]["steps"] == 10
    assert summary["classic/acrobot-v1"]["steps"] > 10  # the expert swings up in ~80 steps: its own limit applies
