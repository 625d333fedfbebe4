"""Scripted experts score clearly above the random policy (fresh seeds, not the measuring ones)."""

from __future__ import annotations

import numpy as np
import pytest

from omnipolicy.envs import get_task, list_tasks, make_env, make_expert, make_teacher
from omnipolicy.envs.experts.atari import BreakoutTracker, PongTracker
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


@pytest.mark.parametrize("task_id", ["atari/pong", "atari/pong-stack", "atari/pong-located", "atari/breakout",
                                     "atari/breakout-located", "classic/cartpole-v1", "metaworld/reach-v3"])
def test_the_atari_games_are_taught_by_their_trackers_and_other_tasks_by_their_experts(task_id: str) -> None:
    teacher, expert = make_teacher(task_id, seed=3), make_expert(task_id, seed=3)
    if task_id.startswith("atari/"):
        assert type(teacher) is (PongTracker if "pong" in task_id else BreakoutTracker)
        assert type(expert).__name__.endswith("Expert")  # the lookahead expert stays the normalisation's 100
    else:
        assert type(teacher) is type(expert)


def test_trackers_press_toward_where_the_ball_crosses_the_paddles_line() -> None:
    pong = PongTracker(get_task("atari/pong"))
    # heading to us 4 px a step both ways: 21.75 steps to x 187, y 100 + 87 = 187: up from 150
    assert pong._press(100, 100, np.array([96, 96]), 150, None) == pong.UP
    # from y 200 it would reach 287: bounced off the bottom wall (207) to 127: down from 150
    assert pong._press(100, 200, np.array([96, 196]), 150, None) == pong.DOWN
    assert pong._press(100, 200, np.array([96, 196]), 129, None) == pong.NOOP  # within the dead band of 127
    assert pong._press(100, 100, np.array([104, 96]), 150, None) == pong.DOWN  # moving away: mid-court (120)
    breakout = BreakoutTracker(get_task("atari/breakout"))
    assert breakout._press(0, 0, None, 100, 100) == breakout.FIRE  # no ball: serve
    # falling 4 px a step both ways from (100, 100): x 175 at the paddle's line, the paddle's left edge to 166
    assert breakout._press(100, 100, np.array([96, 96]), 100, 100) == breakout.UP
    assert breakout._press(100, 100, np.array([96, 96]), 166, 166) == breakout.NOOP
    # a paddle still moving right 20 px a step is judged 6 px ahead: at 150 (156) it presses, at 155 (161) it waits
    assert breakout._press(100, 100, np.array([96, 96]), 150, 130) == breakout.UP
    assert breakout._press(100, 100, np.array([96, 96]), 155, 135) == breakout.NOOP


@pytest.mark.parametrize("task_id,minimum", [("atari/pong-located", -13.3), ("atari/breakout-located", 40.0)])
def test_trackers_play_a_protocol_episode_well_above_random(task_id: str, minimum: float) -> None:
    # Whole 2000-step episodes (about 2 s each). Pong: above 25% of the expert (-13.3; the 10 collection seeds
    # -14 to +4, mean -6.3); Breakout: mean of two episodes (the collection seeds 46 to 365; random play 1.1).
    env, spec = make_env(task_id), get_task(task_id)
    returns = [run_episode(env, make_teacher(task_id, seed=k), seed=1000 + k).ret for k in range(2)]
    assert np.mean(returns) >= minimum and spec.normalize(np.mean(returns)) > 10.0, returns
