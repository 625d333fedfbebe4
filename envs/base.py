"""The environment interface every simulator family adapts to.

:class:`TaskEnv` is a ``gymnasium.Env`` whose observations are dicts keyed by
the task's :class:`~omnipolicy.tokenizers.spec.TimestepSpec` fields. It owns
what every family shares: the conventional Gymnasium spaces (``Discrete`` /
``MultiDiscrete`` for discrete values, ``Box`` for the rest), action validation
(a value of ``action_space`` or the spec's array, both become the spec's
array), the episode limit, fresh (unshared) observation arrays in the spec's
dtypes, and the seed of the first reset. A family implements ``_reset``,
``_step`` and ``render``; ``_step`` always gets the spec's array.
"""

from __future__ import annotations

import os
import string
from typing import Any

import gymnasium as gym
import numpy as np

from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"  # headless MuJoCo rendering (the default, glfw, needs a display)
if "SDL_VIDEODRIVER" not in os.environ and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    # Headless pygame rendering (gymnasium's classic-control frames are drawn on a pygame Surface). Without a
    # display SDL probes its Wayland driver, whose libwayland-client prints "error: XDG_RUNTIME_DIR is invalid or
    # not set in the environment." when that variable is unset; the dummy driver draws the same frames silently.
    os.environ["SDL_VIDEODRIVER"] = "dummy"


def field_space(f: FieldSpec) -> gym.Space:
    """The gymnasium space of one observation field, holding values of the field's own shape.

    A discrete field is ``Discrete(n)`` when it is one scalar (shape ``()``) and ``MultiDiscrete``
    of its shape otherwise; a continuous one is a ``Box`` (bounded when the spec has bounds).
    """
    if f.kind == "text":
        return gym.spaces.Text(min_length=0, max_length=1024, charset=string.printable)
    if f.kind == "image":
        return gym.spaces.Box(0, 255, f.shape, np.uint8)
    if f.kind == "discrete":
        if f.shape == ():
            return gym.spaces.Discrete(f.n, dtype=np.dtype(f.dtype))
        return gym.spaces.MultiDiscrete(np.full(f.shape, f.n), dtype=np.dtype(f.dtype))
    if f.bounded:
        low = np.asarray(f.low, dtype=f.dtype).reshape(f.shape)
        high = np.asarray(f.high, dtype=f.dtype).reshape(f.shape)
        return gym.spaces.Box(low, high, f.shape, np.dtype(f.dtype))
    return gym.spaces.Box(-np.inf, np.inf, f.shape, np.dtype(f.dtype))


def action_space(f: FieldSpec) -> gym.Space:
    """The gymnasium space of an action field, as Gymnasium users expect it.

    One discrete value is ``Discrete(n)`` whatever the spec's shape (our discrete actions are
    ``(1,)`` int64 arrays: one token); several are ``MultiDiscrete``; continuous ones a ``Box``.
    ``TaskEnv.step`` takes a value of this space or the spec's array.

    >>> from omnipolicy.envs.registry import discrete_action
    >>> action_space(discrete_action(6))
    Discrete(6)
    """
    if f.kind == "discrete" and f.size == 1:
        return gym.spaces.Discrete(f.n, dtype=np.dtype(f.dtype))
    return field_space(f)


def observation_space(timestep: TimestepSpec) -> gym.spaces.Dict:
    """A ``Dict`` space with one entry per observation field."""
    return gym.spaces.Dict({f.name: field_space(f) for f in timestep.observation})


class TaskEnv(gym.Env):
    """Base of every task environment (gymnasium interface, dict observations).

    Args:
        spec: the task's spec (a :class:`~omnipolicy.envs.registry.TaskSpec`).
        render_mode: None or ``"rgb_array"``.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, spec, render_mode: str | None = None) -> None:
        self.task = spec
        self.render_mode = render_mode
        self.observation_space = observation_space(spec.timestep)
        self.action_space = action_space(spec.timestep.action)
        self._elapsed = 0
        self._next_seed: int | None = None

    # -- to implement per family ---------------------------------------------------------------
    def _reset(self, seed: int | None) -> tuple[dict[str, Any], dict]:
        """Reset the simulator (seeded when ``seed`` is not None); raw observation fields, info."""
        raise NotImplementedError

    def _step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        """Step the simulator with a validated action in the spec's shape and dtype."""
        raise NotImplementedError

    @property
    def native_action_space(self) -> gym.Space:
        """The simulator's own action space (the contract test compares it with the spec)."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def seed_next_reset(self, seed: int | None) -> None:
        """Seed used by the next ``reset()`` that is called without a seed."""
        self._next_seed = seed

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, Any], dict]:
        """Start an episode; the same seed gives the same episode start."""
        if seed is None:
            seed, self._next_seed = self._next_seed, None
        super().reset(seed=seed)
        self._elapsed = 0
        obs, info = self._reset(seed)
        return self._observation(obs), info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict]:
        """Advance one step; ``truncated`` is True at ``spec.max_steps``.

        Args:
            action: a value of ``action_space`` (``action_space.sample()``; an int for
                ``Discrete``) or the action in the spec's shape and dtype (what experts,
                policies and datasets use, e.g. an int64 array of shape (1,)).

        Raises:
            ValueError: the action has the wrong size, is out of range or not finite.
        """
        obs, reward, terminated, truncated, info = self._step(self._action(action))
        self._elapsed += 1
        truncated = bool(truncated or self._elapsed >= self.task.max_steps) and not terminated
        return self._observation(obs), float(reward), bool(terminated), truncated, info

    @property
    def elapsed_steps(self) -> int:
        """Steps taken in the current episode."""
        return self._elapsed

    def _action(self, action: Any) -> np.ndarray:
        f = self.task.timestep.action
        if f.kind == "text":  # an answer: a str (or a 0-d / one-element array of one)
            a = np.asarray(action, dtype=object).reshape(-1)
            if a.size != 1 or not isinstance(a[0], str):
                raise ValueError(f"{self.task.id}: expected a text action (one str), got {action!r}")
            return np.array(a[0], dtype=str)
        a = np.asarray(action)
        if a.size != f.size:
            scalar = f" or one int of {self.action_space}" if isinstance(self.action_space, gym.spaces.Discrete) else ""
            raise ValueError(
                f"{self.task.id}: expected an action of shape {f.shape} ({f.kind}, {f.dtype}){scalar}, got shape {a.shape}"
            )
        a = a.reshape(f.shape)
        if f.kind == "discrete":
            if not np.all((a >= 0) & (a < f.n)) or not np.all(a == np.round(a)):
                raise ValueError(f"{self.task.id}: discrete action must be integers in [0, {f.n}), got {a.tolist()}")
            return a.astype(f.dtype)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{self.task.id}: action must be finite, got {a.tolist()}")
        a = a.astype(f.dtype)
        if f.bounded:
            a = np.clip(a, np.asarray(f.low, f.dtype).reshape(f.shape), np.asarray(f.high, f.dtype).reshape(f.shape))
        return a

    def _observation(self, raw: dict[str, Any]) -> dict[str, Any]:
        obs: dict[str, Any] = {}
        for f in self.task.timestep.observation:
            value = raw[f.name]
            if f.kind == "text":
                obs[f.name] = str(value)
            else:
                # np.array copies: no buffer is shared with the simulator or the previous step.
                obs[f.name] = np.array(value, dtype=f.dtype, copy=True).reshape(f.shape)
        return obs


class GymTaskEnv(TaskEnv):
    """A task backed by a gymnasium env; by default its observation array becomes ``"state"``.

    Args:
        spec: the task's spec.
        env: the gymnasium env, unwrapped (``TaskEnv`` enforces the episode limit itself).
        render_mode: None or ``"rgb_array"``.
    """

    def __init__(self, spec, env: gym.Env, render_mode: str | None = None) -> None:
        super().__init__(spec, render_mode)
        self.env = env
        self._discrete = isinstance(env.action_space, gym.spaces.Discrete)

    @property
    def unwrapped_env(self) -> gym.Env:
        """The simulator's own env (experts read its internals)."""
        return self.env.unwrapped

    @property
    def native_action_space(self) -> gym.Space:
        return self.env.action_space

    def _convert(self, obs: Any) -> dict[str, Any]:
        return {"state": obs}

    def _reset(self, seed: int | None) -> tuple[dict[str, Any], dict]:
        obs, info = self.env.reset(seed=seed)
        return self._convert(obs), dict(info)

    def _step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        native = int(action.reshape(-1)[0]) if self._discrete else action
        obs, reward, terminated, truncated, info = self.env.step(native)
        return self._convert(obs), float(reward), terminated, truncated, dict(info)

    def render(self) -> np.ndarray:
        """RGB frame (uint8 H x W x 3) of the current state; needs ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            raise RuntimeError(f"{self.task.id}: make the env with render_mode='rgb_array' to render")
        return np.asarray(self.env.render(), dtype=np.uint8)

    def close(self) -> None:
        self.env.close()
