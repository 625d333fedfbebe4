"""Scripted experts score clearly above the random policy (fresh seeds, not the measuring ones)."""

from __future__ import annotations

import numpy as np
import pytest

from omnipolicy.envs import get_task, list_tasks, make_env, make_expert
from omnipolicy.envs.rollout import run_episode

FAST = [s.id for s in list_tasks() if s.domain != "atari" and s.scores_from is None]


@pytest.mark.parametrize("task_id", FAST)
def test_expert_scores_near_its_measured_level(task_id: str) -> None:
    spec = get_task(task_id)
    assert spec.measured, f"{task_id}: run scripts/measure_experts.py --tasks {task_id}"
    env = make_env(task_id)
    expert = make_expert(task_id, seed=0)
    episodes = 1 if spec.domain == "metaworld" else 2
    results = [run_episode(env, expert, seed=1000 + k) for k in range(episodes)]
    env.close()
    score = spec.normalize(float(np.mean([r.ret for r in results])))
    assert score >= 60.0, f"{task_id}: expert-normalised score {score:.1f} (returns {[r.ret for r in results]})"
    if spec.has_success:
        assert all(r.success for r in results)


def _play_until(env, expert, seed: int, stop) -> tuple[float, list[float]]:
    obs, _ = env.reset(seed=seed)
    expert.reset(env, obs)
    rewards: list[float] = []
    while True:
        obs, reward, terminated, truncated, _ = env.step(expert.act(env, obs))
        rewards.append(reward)
        if terminated or truncated or stop(rewards):
            return float(sum(rewards)), rewards


def test_pong_expert_wins_the_first_points() -> None:
    env, expert = make_env("atari/pong"), make_expert("atari/pong")
    _, rewards = _play_until(env, expert, seed=1000, stop=lambda rs: sum(r != 0 for r in rs) >= 3)
    assert [r for r in rewards if r] == [1.0, 1.0, 1.0]


def test_breakout_expert_breaks_bricks() -> None:
    # A uniform random policy scores about 1.5 in a whole episode.
    env, expert = make_env("atari/breakout"), make_expert("atari/breakout")
    total, rewards = _play_until(env, expert, seed=1000, stop=lambda rs: len(rs) >= 600)
    assert total >= 10 and env.ale.lives() >= 4, (total, env.ale.lives())


@pytest.mark.slow
@pytest.mark.parametrize("task_id,minimum", [("atari/pong", 5.0), ("atari/breakout", 300.0)])
def test_atari_expert_protocol_episode(task_id: str, minimum: float) -> None:
    # a whole episode of the protocol (2000 steps): over 20 measured, Pong 5 to 10, Breakout 189 to 425 (one under 300)
    spec = get_task(task_id)
    env, expert = make_env(task_id), make_expert(task_id)
    result = run_episode(env, expert, seed=2000)
    assert result.length == spec.max_steps == 2000, result
    assert result.ret >= minimum and spec.normalize(result.ret) >= 50.0, result
