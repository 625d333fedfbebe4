"""Actors and the one rollout loop.

Every episode the project runs goes through :func:`run_episodes`: expert collection, DAgger rounds, the
evaluation protocol, expert measurement and the simulated robot's plain-simulation baseline. What chooses the
actions is an :class:`Actor`: a batch of observations in, a batch of actions out, with a reset per episode.
A trained checkpoint is one (``omnipolicy.agent.PolicyActor``); so are the scripted experts and the uniform
random policy here.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from .registry import TaskSpec, make_expert

#: String values of an env's reset ``info`` kept with each episode, for per-value breakdowns in reports (the
#: instruction's phrasing, the object it names, a question's type, the number of examples before a query).
EPISODE_LABELS: tuple[str, ...] = ("phrasing", "target_object", "question_type", "shots")
#: Boolean ``info`` values an env reports per step, kept per episode as "ever True" (a rate in reports).
EPISODE_FLAGS: tuple[str, ...] = ("wrong_object",)


class Actor(Protocol):
    """What the rollout loop drives: anything that maps a batch of observations to actions."""

    name: str

    def begin(self, task: TaskSpec, envs: Sequence) -> None:
        """Called once per batch of episodes, before the first reset, with the parallel envs."""

    def reset_env(self, index: int, obs: dict) -> None:
        """Environment ``index`` starts a new episode with observation ``obs``."""

    def act(self, active: Sequence[int], observations: Sequence[dict]) -> list[np.ndarray]:
        """Actions for the environments ``active`` (indices into the envs) given their observations."""


class ScriptedActor:
    """Policies that read their env (scripted experts, ``RandomPolicy``) as an actor, one policy per environment.

    Each policy has ``reset(env, obs)`` and ``act(env, obs)``; policy ``i`` acts in environment ``i``.
    """

    name = "scripted"

    def __init__(self, policies: Sequence[Any]) -> None:
        self.policies = list(policies)

    def begin(self, task: TaskSpec, envs: Sequence) -> None:
        if len(envs) != len(self.policies):
            raise ValueError(f"{type(self).__name__} has {len(self.policies)} policies, one per environment, "
                             f"but was given {len(envs)} environments")
        self.envs = envs

    def reset_env(self, index: int, obs: dict) -> None:
        self.policies[index].reset(self.envs[index], obs)

    def act(self, active: Sequence[int], observations: Sequence[dict]) -> list[np.ndarray]:
        return [self.policies[i].act(self.envs[i], o) for i, o in zip(active, observations)]


class ExpertActor(ScriptedActor):
    """The task's scripted expert (it may read simulator internals); environment ``i``'s is seeded ``seed + i``."""

    name = "expert"

    def __init__(self, seed: int = 0) -> None:
        super().__init__([])
        self.seed = seed
        self.recipe = partial(ExpertActor, seed)

    def begin(self, task: TaskSpec, envs: Sequence) -> None:
        self.policies = [make_expert(task.id, seed=self.seed + i) for i in range(len(envs))]
        super().begin(task, envs)


class RandomActor:
    """Uniform random actions from the task's action space (seeded per task: the task order does not matter).

    A text action (an answer) is one of the env's ``answer_choices``, uniformly: chance accuracy.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.recipe = partial(RandomActor, seed)

    def begin(self, task: TaskSpec, envs: Sequence) -> None:
        self.rng = np.random.default_rng([self.seed, zlib.crc32(task.id.encode())])
        self.action = task.timestep.action
        if self.action.kind == "text":
            self.choices = list(envs[0].answer_choices)

    def reset_env(self, index: int, obs: dict) -> None:
        pass

    def act(self, active: Sequence[int], observations: Sequence[dict]) -> list[np.ndarray]:
        a = self.action
        if a.kind == "text":
            return [np.array(self.choices[self.rng.integers(len(self.choices))]) for _ in active]
        if a.kind == "discrete":
            return [self.rng.integers(0, a.n, size=a.shape).astype(a.dtype) for _ in active]
        low, high = np.asarray(a.low).reshape(a.shape), np.asarray(a.high).reshape(a.shape)
        return [self.rng.uniform(low, high).astype(a.dtype) for _ in active]


@dataclass
class Rollout:
    """One finished episode.

    Attributes:
        seed: its reset seed.
        ret: undiscounted return.
        length: steps taken.
        success: whether ``info["success"]`` was ever True (None if the task has no success).
        terminated: whether it ended by termination (not by truncation or the step limit).
        seconds: wall-clock time from its reset to its end, actor and other environments' steps included.
        observations: with ``record``, each observation field's values before every step.
        actions: with ``record``, the recorded action of every step (the teacher's when there is one).
        chosen: with ``record`` and a teacher, the actor's action of every step (executed or not).
        rewards: with ``record``, the reward of every step.
        labels: the :data:`EPISODE_LABELS` its env's reset info holds (e.g. the instruction's phrasing).
        flags: the :data:`EPISODE_FLAGS` its env reports, each True if it was True at any step.
    """

    seed: int
    ret: float
    length: int
    success: bool | None
    terminated: bool
    seconds: float
    observations: dict[str, list] | None = None
    actions: list | None = None
    chosen: list | None = None
    rewards: list[float] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)


def run_episodes(
    actor: Actor,
    task: TaskSpec,
    envs: Sequence,
    seeds: Sequence[int],
    *,
    limit: int | None = None,
    record: bool = False,
    teacher: Actor | None = None,
    execute: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    progress: Any = None,
) -> list[Rollout]:
    """Run one episode per seed in the parallel ``envs``, batched through ``actor``.

    Episode ``k`` is reset with ``seeds[k]`` in the first free environment (environments take the episodes in
    order, and a finished one starts the next); it ends when the env terminates or truncates, or after ``limit``
    steps.

    Args:
        actor: chooses the actions.
        task: the envs' task.
        envs: task envs (``make_env``), at most ``len(seeds)`` of them used.
        seeds: reset seed of each episode.
        limit: most steps per episode (default and upper bound: ``task.max_steps``).
        record: keep every step's observation, action and reward (for datasets).
        teacher: a second actor asked in the same states; its actions are the ones recorded (DAgger's expert
            labels what the policy visits).
        execute: ``(action, label) -> executed action``: what the env executes given the actor's action and the
            recorded one (noise injection, a mixture with the teacher); default: the actor's action.
        on_step: ``(env index, episode index)`` after each reset and each step of an environment (video frames).
        progress: a tqdm-like bar, advanced by one per finished episode.

    Returns:
        One :class:`Rollout` per seed, in ``seeds`` order.
    """
    limit = task.max_steps if limit is None else min(int(limit), task.max_steps)
    n = max(0, min(len(envs), len(seeds)))
    envs = list(envs)[:n]
    names = [f.name for f in task.timestep.observation]
    out: list[Rollout | None] = [None] * len(seeds)
    if n == 0:
        return []
    actor.begin(task, envs)
    if teacher is not None:
        teacher.begin(task, envs)
    episode: list[int | None] = [None] * n  # the episode each environment runs
    obs: list[dict] = [{}] * n
    ret, steps = np.zeros(n), np.zeros(n, dtype=np.int64)
    success, started = np.zeros(n, dtype=bool), np.zeros(n)
    logs: list[tuple[dict[str, list], list, list, list] | None] = [None] * n
    tags: list[dict[str, str]] = [{} for _ in range(n)]  # each episode's EPISODE_LABELS
    flags: list[dict[str, bool]] = [{} for _ in range(n)]
    next_episode = 0

    def start(i: int) -> None:
        nonlocal next_episode
        if next_episode >= len(seeds):
            episode[i] = None
            return
        k = episode[i] = next_episode
        next_episode += 1
        started[i] = time.perf_counter()
        obs[i], info = envs[i].reset(seed=int(seeds[k]))
        ret[i], steps[i], success[i] = 0.0, 0, False
        tags[i] = {key: str(info[key]) for key in EPISODE_LABELS if key in info}
        flags[i] = {key: bool(info[key]) for key in EPISODE_FLAGS if key in info}
        if record:
            logs[i] = ({name: [] for name in names}, [], [], [])
        actor.reset_env(i, obs[i])
        if teacher is not None:
            teacher.reset_env(i, obs[i])
        if on_step is not None:
            on_step(i, k)

    def finish(i: int, terminated: bool) -> None:
        k = episode[i]
        rollout = Rollout(int(seeds[k]), float(ret[i]), int(steps[i]), bool(success[i]) if task.has_success else None,
                          terminated, time.perf_counter() - started[i], labels=tags[i], flags=flags[i])
        if record:
            rollout.observations, rollout.actions, rollout.chosen, rollout.rewards = logs[i]
            if teacher is None:
                rollout.chosen = None
        out[k] = rollout
        if progress is not None:
            progress.update(1)
        start(i)

    for i in range(n):
        start(i)
    while True:
        active = [i for i in range(n) if episode[i] is not None]
        if not active:
            break
        observations = [obs[i] for i in active]
        actions = actor.act(active, observations)
        labels = actions if teacher is None else teacher.act(active, observations)
        for i, action, label in zip(active, actions, labels):
            if record:
                fields, recorded, chosen, rewards = logs[i]
                for name in names:
                    fields[name].append(obs[i][name])
                recorded.append(label)
                chosen.append(action)
            if execute is not None:
                action = execute(action, label)
            obs[i], reward, terminated, truncated, info = envs[i].step(action)
            ret[i] += float(reward)
            steps[i] += 1
            if record:
                rewards.append(float(reward))
            if not success[i]:
                success[i] = bool(info.get("success", False))
            for key in EPISODE_FLAGS:
                if key in info:
                    flags[i][key] = flags[i].get(key, False) or bool(info[key])
            if on_step is not None:
                on_step(i, episode[i])
            if terminated or truncated or steps[i] >= limit:
                finish(i, bool(terminated))
    return out


def run_episode(env, policy, seed: int, limit: int | None = None) -> Rollout:
    """One episode of an env-reading policy (an expert, ``RandomPolicy``) in ``env`` (a task env of ``make_env``)."""
    return run_episodes(ScriptedActor([policy]), env.task, [env], [seed], limit=limit)[0]
