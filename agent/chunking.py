"""Executing chunks of actions one control tick at a time (ACT, Zhao et al. 2023, arXiv 2304.13705).

A checkpoint trained with ``ModelConfig.action_chunk = k > 1`` predicts the next ``k`` actions per query. A
:class:`ChunkExecutor` turns those chunks into one action per tick, per environment:

- ``ensemble`` (temporal ensembling): the policy is queried every tick; the chunks of the last ``k`` ticks are
  kept, and the action executed at tick ``t`` is the weighted mean of every kept chunk's prediction for ``t``,
  with weights ``w_i = exp(-m * i)`` normalised to sum 1, where ``i = 0`` is the **oldest** prediction (ACT's
  convention: with ``m > 0`` older predictions weigh more, which smooths the motion; ``m = 0`` is a plain mean,
  ``m < 0`` favours the newest). ACT's default ``m = 0.01`` (:data:`ENSEMBLE_WEIGHT`).
- ``receding`` horizon: the policy is queried when the previous chunk is used up, and its ``k`` actions run
  open loop; the observations of the ticks in between never reach the model.

>>> ex = ChunkExecutor(num_envs=1, chunk=2, execution="ensemble", weight=0.0)
>>> ex.add(0, np.array([[0.0], [2.0]]))  # tick 0 predicts ticks 0 and 1
>>> ex.next_action(0)
array([0.])
>>> ex.add(0, np.array([[4.0], [6.0]]))  # tick 1 predicts ticks 1 and 2
>>> ex.next_action(0)  # the mean of 2.0 (from tick 0) and 4.0 (from tick 1)
array([3.])
"""

from __future__ import annotations

from collections import deque

import numpy as np

from omnipolicy.tokenizers.chunking import CHUNK_EXECUTIONS

ENSEMBLE_WEIGHT = 0.01
"""ACT's temporal-ensembling weight ``m`` (``w_i = exp(-m * i)``, ``i = 0`` the oldest prediction)."""


def ensemble_weights(n: int, m: float) -> np.ndarray:
    """float64 (n,): the normalised weights ``exp(-m * i) / sum`` of ``n`` predictions, ``i = 0`` the oldest."""
    w = np.exp(-float(m) * np.arange(n))
    return w / w.sum()


class ChunkExecutor:
    """Per-environment bookkeeping that turns predicted chunks into one action per control tick.

    Args:
        num_envs: parallel environments.
        chunk: ``k``, actions per chunk (1: every query's one action is executed as is).
        execution: ``"ensemble"`` or ``"receding"`` (see the module docstring).
        weight: the ensembling weight ``m`` (ignored by ``receding``).

    Raises:
        ValueError: a bad ``num_envs``, ``chunk`` or ``execution``, or a non-finite ``weight``.
    """

    def __init__(self, num_envs: int, chunk: int, execution: str = "ensemble", weight: float = ENSEMBLE_WEIGHT) -> None:
        if num_envs < 1 or chunk < 1:
            raise ValueError(f"ChunkExecutor needs num_envs >= 1 and chunk >= 1, got {num_envs} and {chunk}")
        if execution not in CHUNK_EXECUTIONS:
            raise ValueError(f"chunk execution must be one of {CHUNK_EXECUTIONS}, got {execution!r}")
        if not np.isfinite(weight):
            raise ValueError(f"the ensembling weight m must be finite, got {weight!r}")
        self.chunk = int(chunk)
        self.execution = execution
        self.weight = float(weight)
        # ensemble: the chunks of the last k queries, oldest first; receding: the actions still to execute
        self._queues: list[deque] = [self._queue() for _ in range(num_envs)]

    def _queue(self) -> deque:
        return deque(maxlen=self.chunk) if self.execution == "ensemble" else deque()

    def reset(self, index: int) -> None:
        """Environment ``index`` starts a new episode: forget its chunks."""
        self._queues[index] = self._queue()

    def needs_chunk(self, index: int) -> bool:
        """Whether environment ``index`` must query the policy this tick (always when ensembling)."""
        return self.execution == "ensemble" or not self._queues[index]

    def add(self, index: int, chunk: np.ndarray) -> None:
        """The chunk ``(k, *action shape)`` predicted for environment ``index`` at this tick.

        Raises:
            ValueError: the chunk does not hold ``k`` actions.
        """
        chunk = np.asarray(chunk)
        if chunk.ndim < 1 or chunk.shape[0] != self.chunk:
            raise ValueError(f"expected a chunk of {self.chunk} actions (k, *action shape), got shape {chunk.shape}")
        if self.execution == "ensemble":
            self._queues[index].append(chunk)
        else:
            self._queues[index].extend(chunk)

    def next_action(self, index: int) -> np.ndarray:
        """The action environment ``index`` executes this tick (ensembling: after this tick's :meth:`add`).

        Raises:
            ValueError: no chunk covers this tick (``add`` was not called when :meth:`needs_chunk` said so).
        """
        q = self._queues[index]
        if not q:
            raise ValueError(f"env {index}: no predicted action for this tick; add a chunk first")
        if self.execution == "receding":
            return q.popleft()
        if len(q) == 1:
            return q[0][0]
        n = len(q)  # chunk j (0 = oldest) was predicted n - 1 - j ticks ago: its element n - 1 - j is for now
        preds = np.stack([c[n - 1 - j] for j, c in enumerate(q)]).astype(np.float64)  # (n, *action shape)
        w = ensemble_weights(n, self.weight).reshape(-1, *([1] * (preds.ndim - 1)))
        return (w * preds).sum(axis=0).astype(q[-1].dtype)
