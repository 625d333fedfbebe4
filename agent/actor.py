"""A trained checkpoint as an evaluation actor: the batched ``Actor`` interface of ``envs.rollout`` over a ``Policy``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from .policy import Policy


class PolicyActor:
    """A trained checkpoint, acting from observations only.

    Built with :meth:`from_checkpoint` it also carries a ``recipe``, so a parallel evaluation
    (``evaluate(..., workers=2)``) can load the same policy in each worker process.
    """

    def __init__(self, policy: Policy, temperature: float = 0.0) -> None:
        self.policy = policy
        self.temperature = temperature
        self.name = "policy"
        self.recipe: Callable[[], "PolicyActor"] | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, device: str = "cpu", temperature: float = 0.0,
                        continuous_decoding: str = "auto") -> "PolicyActor":
        """Load a checkpoint as an actor (the KV-cached session path) that can be rebuilt in worker processes."""
        recipe = partial(_policy_actor, str(checkpoint), str(device), float(temperature), continuous_decoding)
        actor = recipe()
        actor.recipe = recipe
        return actor

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task ids the checkpoint was trained on."""
        return tuple(sorted(self.policy.tasks))

    def begin(self, task: Any, envs: Sequence) -> None:
        self.spec = self.policy.spec(task.id)  # the spec it acts with (KeyError naming the checkpoint's tasks)
        self.task_id = task.id
        self.policy.temperature = self.temperature
        self.policy.reset(len(envs))
        self.last_obs: list[dict | None] = [None] * len(envs)

    def reset_env(self, index: int, obs: dict) -> None:
        self.policy.reset_env(index)
        self.last_obs[index] = obs

    def act(self, active: Sequence[int], observations: Sequence[dict]) -> list[np.ndarray]:
        if self.policy.acts_through_session(self.task_id):
            return self.policy.act(self.task_id, list(observations), env_ids=list(active))
        # The recomputing path steps every environment together; finished ones repeat their last
        # observation and their actions are dropped.
        for i, o in zip(active, observations):
            self.last_obs[i] = o
        actions = self.policy.act(self.task_id, self.last_obs)
        return [actions[i] for i in active]


def _policy_actor(checkpoint: str, device: str, temperature: float, continuous_decoding: str) -> PolicyActor:
    policy = Policy.from_checkpoint(checkpoint, device=device, use_session=True, continuous_decoding=continuous_decoding)
    return PolicyActor(policy, temperature)
