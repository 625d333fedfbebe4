"""Action chunking (ACT, Zhao et al. 2023, arXiv 2304.13705): a timestep's action part holds the next k actions.

With chunk size ``k`` the action tokens of timestep ``t`` are ``a_t .. a_{t+k-1}`` (``k * A`` tokens); past the
episode's end the last action repeats with its loss masked off. Two ways to execute the chunks set how an episode
is tokenized:

- ``ensemble`` (ACT's temporal ensembling): the policy is queried every control tick, so every tick is a
  timestep (stride 1), and the action executed at a tick is a weighted mean of every chunk's prediction for it.
- ``receding`` horizon: the policy sees every k-th tick and executes its chunk open loop, so the episode is
  tokenized with stride ``k``: timesteps at ticks ``0, k, 2k, ...``, each holding the next ``k`` actions.

Chunking applies to continuous actions; a task with a discrete action keeps one action per timestep.

>>> from omnipolicy.tokenizers.spec import FieldSpec
>>> arm = FieldSpec("action", "continuous", (4,), "float32", low=(-1.0,) * 4, high=(1.0,) * 4)
>>> ActionChunking(4, "receding").for_action(arm), ActionChunking(4, "ensemble").for_action(arm)
((4, 4), (4, 1))
>>> ActionChunking(4).for_action(FieldSpec("action", "discrete", (), "int64", n=3))
(1, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import FieldSpec

CHUNK_EXECUTIONS = ("ensemble", "receding")
"""How a chunked policy executes its chunks (see the module docstring)."""


@dataclass(frozen=True)
class ActionChunking:
    """Chunk size and execution mode of a model's continuous actions.

    Attributes:
        size: ``k``, actions per chunk (1: no chunking).
        execution: ``"ensemble"`` or ``"receding"`` (see the module docstring).

    Raises:
        ValueError: ``size`` below 1 or an unknown execution mode.
    """

    size: int = 1
    execution: str = "ensemble"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"action chunk size must be an int >= 1 (1 = no chunking), got {self.size!r}")
        if self.execution not in CHUNK_EXECUTIONS:
            raise ValueError(f"chunk execution must be one of {CHUNK_EXECUTIONS}, got {self.execution!r}")

    def for_action(self, action: FieldSpec) -> tuple[int, int]:
        """``(chunk, stride)`` of a task with this action: ``(1, 1)`` for a discrete action or ``size == 1``."""
        if action.kind != "continuous" or self.size == 1:
            return 1, 1
        return self.size, self.size if self.execution == "receding" else 1

    def to_dict(self) -> dict:
        return {"size": self.size, "execution": self.execution}
