"""Synthetic training windows in the exact ``WindowLoader`` batch format.

For tests, benchmarks and smoke runs that must not depend on simulators or a
dataset on disk. Each timestep is ``obs_tokens`` continuous observation ids,
``image_patches`` patch slots, the separator and ``action_tokens`` continuous
action ids; action ``j`` copies the bin of observation ``j`` shifted by ``j``
(a rule a transformer learns quickly), and loss is on the action tokens.

>>> from omnipolicy.tokenizers.vocab import VocabLayout
>>> src = SyntheticWindows(VocabLayout(text_size=100), context=64, batch_size=2, seed=0)
>>> batch = next(iter(src))
>>> batch["tokens"].shape, batch["tokens"].dtype, batch["loss_mask"].dtype
((2, 64), dtype('int64'), dtype('bool'))
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from omnipolicy.tokenizers.image import patch_slots
from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec
from omnipolicy.tokenizers.vocab import VocabLayout

SYNTHETIC_TASK_ID = "synthetic/copy-v0"
"""Task id under which synthetic runs save their spec."""


def synthetic_spec(obs_tokens: int, action_tokens: int) -> TimestepSpec:
    """The TimestepSpec that tokenizes to the synthetic windows' layout (image-free).

    A ``state`` vector of ``obs_tokens`` mu-law continuous values and an
    ``action`` of ``action_tokens`` continuous values.
    """
    return TimestepSpec(
        observation=(FieldSpec("state", "continuous", (obs_tokens,), "float32"),),
        action=FieldSpec("action", "continuous", (action_tokens,), "float32"),
    )


class SyntheticWindows:
    """An endless, seeded, resumable source of training batches.

    Args:
        layout: vocabulary layout the ids are drawn from.
        context: window length S.
        batch_size: windows per batch B.
        obs_tokens: continuous observation tokens per timestep.
        image_patches: patch slots per timestep (laid out as a square-ish image).
        action_tokens: action tokens per timestep (at most ``obs_tokens``).
        num_windows: draw batches from a fixed pool of this many windows (for
            overfitting); ``None`` draws fresh windows every batch.
        seed: seed of the pool and of the batch order.

    Raises:
        ValueError: inconsistent sizes.
    """

    def __init__(
        self,
        layout: VocabLayout,
        context: int,
        batch_size: int,
        obs_tokens: int = 6,
        image_patches: int = 0,
        action_tokens: int = 2,
        num_windows: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 1 <= action_tokens <= obs_tokens:
            raise ValueError(f"SyntheticWindows: need 1 <= action_tokens <= obs_tokens, got {action_tokens} and {obs_tokens}")
        if context < 2 or batch_size < 1:
            raise ValueError(f"SyntheticWindows: need context >= 2 and batch_size >= 1, got {context} and {batch_size}")
        self.layout, self.context, self.batch_size = layout, context, batch_size
        self.obs_tokens, self.image_patches, self.action_tokens = obs_tokens, image_patches, action_tokens
        self.timestep_len = image_patches + obs_tokens + 1 + action_tokens
        self.rng = np.random.default_rng(seed)
        self.pool = [self._window(self.rng) for _ in range(num_windows)] if num_windows else None

    def _window(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        lay, S, L = self.layout, self.context, self.timestep_len
        n_steps = -(-S // L)
        obs = rng.integers(0, lay.num_bins, size=(n_steps, self.obs_tokens))  # bins
        act = (obs[:, : self.action_tokens] + np.arange(self.action_tokens)) % lay.num_bins
        P = self.image_patches
        step_tokens = np.concatenate(
            [
                np.full((n_steps, P), lay.patch_id),
                obs + lay.continuous_offset,
                np.full((n_steps, 1), lay.separator_id),
                act + lay.continuous_offset,
            ],
            axis=1,
        )  # (n_steps, L)
        loss = np.zeros((n_steps, L), dtype=bool)
        loss[:, L - self.action_tokens :] = True
        tokens = step_tokens.reshape(-1)[:S]
        local_pos = np.tile(np.arange(L), n_steps)[:S]
        is_patch = tokens == lay.patch_id  # patch slots come first in a timestep: slot k = local position k
        side = max(1, int(np.ceil(np.sqrt(P)))) if P else 1
        patch_index = patch_slots(tokens, lay.patch_id)
        return {
            "tokens": tokens.astype(np.int64),
            "patch_index": patch_index.astype(np.int64),
            "loss_mask": loss.reshape(-1)[:S],
            "local_pos": local_pos.astype(np.int64),
            "patches": (rng.uniform(-0.25, 0.25, size=(int(is_patch.sum()), 3, 16, 16))).astype(np.float32),
            "patch_pos": np.stack(np.divmod(local_pos[is_patch], side), axis=1).astype(np.int64),
        }

    def next_batch(self) -> dict[str, np.ndarray]:
        """One batch in the WindowLoader format."""
        if self.pool is not None:
            windows = [self.pool[i] for i in self.rng.integers(0, len(self.pool), size=self.batch_size)]
        else:
            windows = [self._window(self.rng) for _ in range(self.batch_size)]
        return collate_windows(windows)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def collate_windows(windows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack single windows (each with its own ``patch_index`` into its own ``patches``) into one batch.

    Returns:
        The WindowLoader batch dict; ``task_index`` is 0 for every row.
    """
    offsets = np.cumsum([0] + [len(w["patches"]) for w in windows])[:-1]
    return {
        "tokens": np.stack([w["tokens"] for w in windows]),
        "loss_mask": np.stack([w["loss_mask"] for w in windows]),
        "local_pos": np.stack([w["local_pos"] for w in windows]),
        "patch_index": np.stack([np.where(w["patch_index"] >= 0, w["patch_index"] + off, -1) for w, off in zip(windows, offsets)]),
        "patches": np.concatenate([w["patches"] for w in windows]).reshape(-1, 3, 16, 16).astype(np.float32),
        "patch_pos": np.concatenate([w["patch_pos"] for w in windows]).reshape(-1, 2).astype(np.int64),
        "task_index": np.zeros(len(windows), dtype=np.int64),
    }
