"""A trained checkpoint as an evaluation actor: the batched ``Actor`` interface of ``envs.rollout`` over a ``Policy``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from .chunking import ENSEMBLE_WEIGHT, ChunkExecutor
from .policy import Policy


class PolicyActor:
    """A trained checkpoint, acting from observations only: one action per control tick.

    A checkpoint trained with action chunking (``ModelConfig.action_chunk``) predicts ``k`` actions per query;
    they are executed as the checkpoint's ``chunk_execution`` says (:mod:`~omnipolicy.agent.chunking`): temporal
    ensembling (a query every tick) or a receding horizon (a query every ``k`` ticks; the observations in
    between are not fed to the model). Built with :meth:`from_checkpoint` it also carries a ``recipe``, so a
    parallel evaluation (``evaluate(..., workers=2)``) can load the same policy in each worker process.

    Args:
        policy: the policy.
        temperature: 0 for greedy decoding, > 0 to sample.
        ensemble_weight: the temporal-ensembling weight ``m`` (``w_i = exp(-m * i)``, ``i = 0`` the oldest
            prediction; ACT's 0.01); used by checkpoints whose ``chunk_execution`` is ``ensemble``.
    """

    def __init__(self, policy: Policy, temperature: float = 0.0, ensemble_weight: float = ENSEMBLE_WEIGHT) -> None:
        self.policy = policy
        self.temperature = temperature
        self.ensemble_weight = float(ensemble_weight)
        self.name = "policy"
        self.recipe: Callable[[], "PolicyActor"] | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, device: str = "cpu", temperature: float = 0.0,
                        continuous_decoding: str = "auto",
                        ensemble_weight: float = ENSEMBLE_WEIGHT) -> "PolicyActor":
        """Load a checkpoint as an actor (the KV-cached session path) that can be rebuilt in worker processes."""
        recipe = partial(_policy_actor, str(checkpoint), str(device), float(temperature), continuous_decoding,
                         float(ensemble_weight))
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
        self.chunks = ChunkExecutor(len(envs), self.policy.chunk_size(task.id),
                                    self.policy.meta.model.chunk_execution, self.ensemble_weight)

    def reset_env(self, index: int, obs: dict) -> None:
        self.policy.reset_env(index)
        self.chunks.reset(index)

    def act(self, active: Sequence[int], observations: Sequence[dict]) -> list[np.ndarray]:
        query = [j for j, i in enumerate(active) if self.chunks.needs_chunk(i)]
        if query:
            ids = [active[j] for j in query]
            chunks = self.policy.act_chunks(self.task_id, [observations[j] for j in query], env_ids=ids)
            for i, chunk in zip(ids, chunks):
                self.chunks.add(i, chunk)
        return [self.chunks.next_action(i) for i in active]


def _policy_actor(checkpoint: str, device: str, temperature: float, continuous_decoding: str,
                  ensemble_weight: float = ENSEMBLE_WEIGHT) -> PolicyActor:
    policy = Policy.from_checkpoint(checkpoint, device=device, use_session=True, continuous_decoding=continuous_decoding)
    return PolicyActor(policy, temperature, ensemble_weight)
