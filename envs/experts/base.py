"""What every scripted expert (and the random baseline) looks like.

An expert is built by :func:`omnipolicy.envs.make_expert` as ``cls(spec, seed)``
and driven with ``reset(env, obs)`` at each episode start and
``act(env, obs) -> action``. It may read simulator internals through ``env``
(RAM, emulator state, physics); the learner sees only ``obs``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Expert:
    """Base class: stores the task spec and a seeded RNG; formats actions to the spec.

    Args:
        spec: the task's :class:`~omnipolicy.envs.registry.TaskSpec`.
        seed: seed of the expert's own randomness (if it has any).
    """

    def __init__(self, spec, seed: int = 0) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(seed)

    def reset(self, env, obs: dict[str, Any]) -> None:
        """Called at the start of every episode."""

    def act(self, env, obs: dict[str, Any]) -> np.ndarray:
        """The action for the current step, in the spec's shape and dtype."""
        raise NotImplementedError

    def discrete(self, value: int) -> np.ndarray:
        """A discrete action value as the spec's array."""
        a = self.spec.timestep.action
        return np.full(a.shape, int(value), dtype=a.dtype)

    def continuous(self, value: Any) -> np.ndarray:
        """A continuous action as the spec's array, clipped to its bounds."""
        a = self.spec.timestep.action
        out = np.asarray(value, dtype=np.float64).reshape(a.shape)
        if a.bounded:
            out = np.clip(out, np.reshape(a.low, a.shape), np.reshape(a.high, a.shape))
        return out.astype(a.dtype)


class RandomPolicy(Expert):
    """Uniform random actions over the action spec (the normalisation's 0 point); a text action is one of the
    env's ``answer_choices`` (chance accuracy)."""

    def act(self, env, obs: dict[str, Any]) -> np.ndarray:
        a = self.spec.timestep.action
        if a.kind == "text":
            return np.array(env.answer_choices[int(self.rng.integers(len(env.answer_choices)))])
        if a.kind == "discrete":
            return self.rng.integers(0, a.n, size=a.shape).astype(a.dtype)
        return self.continuous(self.rng.uniform(np.reshape(a.low, a.shape), np.reshape(a.high, a.shape)))
