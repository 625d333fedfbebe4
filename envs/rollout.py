"""Run one episode of a policy (expert or random) in a task env: the measuring primitive."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class EpisodeResult:
    """Outcome of one episode.

    Attributes:
        ret: undiscounted return.
        length: steps taken.
        success: whether ``info["success"]`` was ever True (None if the task has no success).
        seconds: wall-clock time of the episode, policy included.
    """

    ret: float
    length: int
    success: bool | None
    seconds: float


def run_episode(env, policy, seed: int) -> EpisodeResult:
    """Reset ``env`` with ``seed`` and run ``policy`` (``reset(env, obs)``, ``act(env, obs)``) to the end.

    Args:
        env: a task env from :func:`omnipolicy.envs.make_env`.
        policy: an expert or :class:`~omnipolicy.envs.experts.base.RandomPolicy`.
        seed: reset seed.

    Returns:
        The episode's :class:`EpisodeResult`.
    """
    start = time.perf_counter()
    obs, _ = env.reset(seed=seed)
    policy.reset(env, obs)
    ret, length, success = 0.0, 0, False
    while True:
        obs, reward, terminated, truncated, info = env.step(policy.act(env, obs))
        ret += reward
        length += 1
        success |= bool(info.get("success", False))
        if terminated or truncated:
            break
    return EpisodeResult(ret, length, success if env.task.has_success else None, time.perf_counter() - start)
