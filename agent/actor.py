"""A trained checkpoint as an evaluation actor: the batched ``Actor`` interface of ``envs.rollout`` over a ``Policy``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from omnipolicy.envs import get_task

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

    def acts_as(self, task: Any) -> str:
        """The checkpoint's task this actor acts as in ``task``: the task itself, or, for a task the checkpoint was
        not trained on, the task whose scores it shares (``TaskSpec.scores_from``) when their observations and
        actions are the same (a variant that differs in what it asks, such as instructions held out of training).

        Raises:
            KeyError: neither (the message names the checkpoint's tasks).
        """
        base = getattr(task, "scores_from", None)
        if task.id not in self.policy.tasks and base in self.policy.tasks and self.policy.spec(base) == task.timestep:
            return base
        self.policy.spec(task.id)  # KeyError naming the checkpoint's tasks
        return task.id

    def can_act(self, task_id: str) -> bool:
        """Whether the actor acts in ``task_id``: a task it was trained on, or a variant of one (:meth:`acts_as`)."""
        if task_id in self.policy.tasks:
            return True
        try:
            self.acts_as(get_task(task_id))
        except KeyError:
            return False
        return True

    def begin(self, task: Any, envs: Sequence) -> None:
        self.task_id = self.acts_as(task)
        self.spec = self.policy.spec(self.task_id)  # the spec it acts with
        self.policy.temperature = self.temperature
        self.policy.reset(len(envs))
        self.chunks = ChunkExecutor(len(envs), self.policy.chunk_size(self.task_id),
                                    self.policy.meta.model.chunk_execution, self.ensemble_weight)
        self.texts: list[tuple[str, ...] | None] = [None] * len(envs)

    def reset_env(self, index: int, obs: dict) -> None:
        self.policy.reset_env(index)
        self.chunks.reset(index)
        self.texts[index] = self._texts(obs)

    def _texts(self, obs: dict | None) -> tuple[str, ...]:
        """The observation's instructions (:meth:`~omnipolicy.tokenizers.spec.TimestepSpec.instructions`; a
        question changes every step by design)."""
        if not obs:
            return ()
        return tuple(str(obs[f.name]) for f in self.spec.instructions() if f.name in obs)

    def act(self, active: Sequence[int], observations: Sequence[dict]) -> list[np.ndarray]:
        for i, o in zip(active, observations):
            texts = self._texts(o)
            if texts != self.texts[i]:  # a new instruction mid-episode: a fresh context, as `deploy` does
                self.reset_env(i, o)
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
