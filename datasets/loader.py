"""Training batches from a :class:`~omnipolicy.datasets.cache.TokenCache`: windows of ``context`` tokens.

Each row of a batch is one window that starts at a timestep boundary of one episode and runs until
``context`` tokens or the episode's end (then ``pad``). The task of each row is drawn with the given task
weights, then a start timestep uniformly among the task's valid starts (a start is valid when the window fills
up before the episode ends, or is the episode's first timestep). With Gato's prompting, a row is instead
prefixed, with probability ``prompt_prob``, by whole timesteps of another episode of the same task, taken
from that episode's end half of the time and from a uniform position otherwise (Gato, section 3.3); prompt
tokens never carry loss.

With ``random_shift`` > 0 (DrQ's augmentation, :mod:`~omnipolicy.datasets.augment`) every image of a window moves
by one random offset of up to that many pixels per axis, the same for the whole window.

Everything is vectorised over the batch: one fancy-indexed gather per array from the memory-mapped cache.

A cache built with ``image_slots`` (a resampler's N slots per image, or 0 for cross-attention) gives whole
images: every image with a slot in the window (``patch_index`` = ``image * N + latent`` within the batch), or,
with 0 slots, the images of every timestep in the window, with ``frame_index`` (B, S) (each token's timestep's
frame, -1 where its task has no image) and ``image_frame`` (I,) (each image's frame).

>>> # loader = WindowLoader(cache, context=1024, batch_size=32, task_weights={"atari/pong": 2.0, "atari/breakout": 1.0})
>>> # batch = next(iter(loader))  # batch["tokens"]: int64 (32, 1024)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from omnipolicy.tokenizers import normalize_patches
from omnipolicy.tokenizers.image import concat_ranges, image_starts

from .augment import shift_patches
from .cache import EPISODE_COLUMNS, TokenCache


class WindowLoader:
    """Samples training windows across tasks.

    Args:
        cache: the token cache.
        context: tokens per window S.
        batch_size: windows per batch B.
        task_weights: task id -> sampling weight (tasks left out get 0). None: every task of the cache with
            weight 1.
        prompt_prob: probability that a window gets a prompt from another episode of its task.
        seed: seed of the sampler.
        prompt_fraction: at most this fraction of the window is prompt (whole timesteps, at least one).
        prompt_end_prob: probability that a prompt is taken from its episode's end.
        episodes: cache episode indices that windows and prompts come from (None: all; see :func:`holdout_split`).
        random_shift: DrQ's random shift in pixels (0: images as they are).

    Raises:
        ValueError: bad sizes, unknown task ids, no task with positive weight, or no episode to draw from.
    """

    def __init__(
        self,
        cache: TokenCache,
        context: int,
        batch_size: int,
        task_weights: Mapping[str, float] | None = None,
        prompt_prob: float = 0.0,
        seed: int = 0,
        prompt_fraction: float = 0.5,
        prompt_end_prob: float = 0.5,
        episodes: Sequence[int] | np.ndarray | None = None,
        random_shift: int = 0,
    ) -> None:
        if context < 2 or batch_size < 1:
            raise ValueError(f"context must be >= 2 and batch_size >= 1, got context={context}, batch_size={batch_size}")
        if not 0.0 <= prompt_prob <= 1.0 or not 0.0 < prompt_fraction < 1.0:
            raise ValueError(f"prompt_prob must be in [0, 1] and prompt_fraction in (0, 1), got {prompt_prob}, {prompt_fraction}")
        if not isinstance(random_shift, (int, np.integer)) or random_shift < 0:
            raise ValueError(f"random_shift must be an int >= 0 (pixels), got {random_shift!r}")
        if cache.num_episodes == 0:
            raise ValueError(f"Token cache {cache.dir} holds no episodes")
        self.cache, self.context, self.batch_size = cache, int(context), int(batch_size)
        self.prompt_prob, self.prompt_fraction, self.prompt_end_prob = prompt_prob, prompt_fraction, prompt_end_prob
        self.rng = np.random.default_rng(seed)
        self.pad_id = cache.layout.pad_id

        ep = np.asarray(cache.episodes)
        col = {name: ep[:, i] for i, name in enumerate(EPISODE_COLUMNS)}
        self._start, self._L, self._T = col["token_start"], col["tokens_per_timestep"], col["num_timesteps"]
        self._end = col["token_end"]
        allowed = np.ones(len(ep), bool)
        if episodes is not None:
            chosen = np.asarray(episodes, dtype=np.int64).reshape(-1)
            if len(chosen) == 0 or chosen.min() < 0 or chosen.max() >= len(ep):
                raise ValueError(f"episodes must be a non-empty list of cache episode indices in [0, {len(ep)}), "
                                 f"got {len(chosen)} index(es) spanning {chosen.min(initial=0)}..{chosen.max(initial=-1)}")
            allowed[:] = False
            allowed[chosen] = True
        present = sorted(set(col["task_index"][allowed].tolist()))
        names = [cache.task_ids[i] for i in present]
        if task_weights is None:
            weights = dict.fromkeys(names, 1.0)
        else:
            unknown = sorted(set(task_weights) - set(names))
            if unknown:
                raise ValueError(f"Unknown task ids in task_weights: {unknown}; the cache holds {names}")
            weights = {t: float(task_weights.get(t, 0.0)) for t in names}
            if any(w < 0 for w in weights.values()):
                raise ValueError(f"task_weights must be >= 0, got {dict(task_weights)}")
        total = sum(weights.values())
        if total <= 0:
            raise ValueError(f"No task has a positive weight: {weights}")
        self.task_names = names
        self.task_probs = np.array([weights[t] / total for t in names])
        self.task_index = np.array(present, np.int64)
        # per task: its episodes and the cumulative count of valid window starts
        need = -(-self.context // self._L)  # timesteps to fill a window, per episode
        n_starts = np.maximum(self._T - need + 1, 1)
        self._task_eps = [np.flatnonzero((col["task_index"] == t) & allowed) for t in present]
        self._task_cum = [np.cumsum(n_starts[e]) for e in self._task_eps]
        self.image_slots = cache.image_slots
        self.random_shift = int(random_shift)
        if self.image_slots is not None or self.random_shift:  # where each image starts
            self._img_start = np.append(image_starts(cache.patch_pos), len(cache.patch_pos))  # (I + 1,)
        if self.image_slots is not None:  # whole images: each episode's first and per timestep
            starts = self._img_start[:-1]
            self._ep_img0 = np.searchsorted(starts, col["patch_start"])  # (E,)
            n_img = np.searchsorted(starts, col["patch_end"]) - self._ep_img0
            self._ep_K = np.where(self._T > 0, n_img // np.maximum(self._T, 1), 0)  # (E,) images per timestep

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            yield self.sample()

    def sample(self) -> dict[str, np.ndarray]:
        """One batch: tokens, loss_mask, local_pos, patch_index (B, S); patches, patch_pos; task_index, episode (B,);
        with cross-attention's whole images also frame_index (B, S) and image_frame (I,)."""
        B, S, rng = self.batch_size, self.context, self.rng
        task = rng.choice(len(self.task_names), size=B, p=self.task_probs)  # (B,) position in task_names
        episode = np.empty(B, np.int64)
        start_ts = np.empty(B, np.int64)
        prompt_ep = np.full(B, -1, np.int64)
        for k in np.unique(task):
            rows = np.flatnonzero(task == k)
            eps, cum = self._task_eps[k], self._task_cum[k]
            u = rng.integers(0, cum[-1], size=len(rows))
            j = np.searchsorted(cum, u, side="right")
            episode[rows] = eps[j]
            start_ts[rows] = u - np.concatenate([[0], cum[:-1]])[j]  # u - starts of the episodes before
            if self.prompt_prob > 0 and len(eps) > 1:
                with_prompt = rows[rng.random(len(rows)) < self.prompt_prob]
                other = rng.integers(0, len(eps) - 1, size=len(with_prompt))
                own = np.searchsorted(eps, episode[with_prompt])
                prompt_ep[with_prompt] = eps[other + (other >= own)]  # any episode but the row's own
        # prompt segment: whole timesteps from the end (prompt_end_prob) or a uniform position
        has_p = prompt_ep >= 0
        pe = np.where(has_p, prompt_ep, 0)
        pL, pT = self._L[pe], self._T[pe]
        k_p = np.clip(int(S * self.prompt_fraction) // pL, 1, pT)
        from_end = rng.random(B) < self.prompt_end_prob
        p_start_ts = np.where(from_end, pT - k_p, (rng.random(B) * (pT - k_p + 1)).astype(np.int64))
        n1 = np.where(has_p, k_p * pL, 0)  # (B,) prompt tokens
        a1 = self._start[pe] + p_start_ts * pL
        # main segment
        a2 = self._start[episode] + start_ts * self._L[episode]
        avail2 = self._end[episode] - a2
        j = np.arange(S)[None, :]  # (1, S)
        in_prompt = j < n1[:, None]  # (B, S)
        src = np.where(in_prompt, a1[:, None] + j, a2[:, None] + j - n1[:, None])
        valid = in_prompt | (j - n1[:, None] < avail2[:, None])
        src = np.where(valid, src, 0)
        c = self.cache
        tokens = np.where(valid, c.tokens[src], self.pad_id).astype(np.int64)
        loss = valid & ~in_prompt & c.loss_mask[src]
        loss[:, 0] = False  # nothing predicts the first token of a window
        local = np.where(valid, c.local_pos[src], 0).astype(np.int64)
        out = {"tokens": tokens, "loss_mask": loss, "local_pos": local}
        if self.image_slots is not None:
            ep_tok = np.where(in_prompt, pe[:, None], episode[:, None])  # (B, S) each token's episode
            out.update(self._whole_images(src, valid, ep_tok))
        else:
            out.update(self._patches(src, valid))
        out["task_index"] = np.asarray(c.episodes[episode, EPISODE_COLUMNS.index("task_index")], dtype=np.int64)
        out["episode"] = episode
        return out

    def _patches(self, src: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        """One slot per patch: the window's patches and each slot's row of them."""
        c, B, S = self.cache, *src.shape
        pidx = np.where(valid, c.patch_index[src], -1)
        is_patch = pidx >= 0
        rows_p = pidx[is_patch]  # (P,) global patch rows, in batch raster order
        patch_index = np.full((B, S), -1, np.int64)
        patch_index[is_patch] = np.arange(len(rows_p))
        return {"patch_index": patch_index, **self._gather_patches(rows_p, np.nonzero(is_patch)[0])}

    def _gather_patches(self, rows: np.ndarray, window: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Patches (float) and positions of the cache's patch ``rows``; ``window`` (one per row, needed with
        ``random_shift`` > 0): the batch row each belongs to, whose random offset it gets (an image shown in
        several windows of a cache with whole images takes its first window's)."""
        c = self.cache
        if not len(rows):
            return {"patches": np.zeros((0, 3, 16, 16), np.float32), "patch_pos": np.zeros((0, 2), np.int64)}
        raw = np.asarray(c.patches[rows]) if not self.random_shift else self._shifted(rows, window)
        return {"patches": normalize_patches(raw), "patch_pos": np.asarray(c.patch_pos[rows], dtype=np.int64).reshape(-1, 2)}

    def _shifted(self, rows: np.ndarray, window: np.ndarray) -> np.ndarray:
        """uint8 patches of the cache's ``rows``, each of their images shifted by its window's random offset."""
        c, pad = self.cache, self.random_shift
        image = np.searchsorted(self._img_start, rows, side="right") - 1  # (P,) global image of each row
        pairs, inverse = np.unique(np.stack([window, image], axis=1), axis=0, return_inverse=True)  # (J, 2)
        inverse = inverse.reshape(-1)
        lo, hi = self._img_start[pairs[:, 1]], self._img_start[pairs[:, 1] + 1]
        grid = np.asarray(c.patch_pos[hi - 1], np.int64).reshape(-1, 2) + 1  # (J, 2) the last patch's (row, col) + 1
        n_windows = int(window.max()) + 1
        offsets = self.rng.integers(0, 2 * pad + 1, size=(n_windows, 2))[pairs[:, 0]]
        count = hi - lo
        local = np.cumsum(count) - count  # (J,) each image's first row in the gathered patches
        shifted = shift_patches(np.asarray(c.patches[concat_ranges(lo, count)]), local, grid, offsets, pad)
        return shifted[local[inverse] + rows - lo[inverse]]

    def _whole_images(self, src: np.ndarray, valid: np.ndarray, ep_tok: np.ndarray) -> dict[str, np.ndarray]:
        """Whole images for a cache with ``image_slots``: those with a slot in the window (N > 0), or the frames
        of every timestep in the window (0: cross-attention), and how the tokens refer to them."""
        c, N = self.cache, self.image_slots
        out: dict[str, np.ndarray] = {}
        if N > 0:
            slot = np.where(valid, c.patch_index[src], -1).astype(np.int64)  # (B, S) global image * N + latent
            has = slot >= 0
            images, first, inverse = np.unique(slot[has] // N, return_index=True, return_inverse=True)  # (I,)
            image_window = np.nonzero(has)[0][first]  # (I,) the first window that shows each image
            patch_index = np.full(slot.shape, -1, np.int64)
            patch_index[has] = inverse * N + slot[has] % N
            out["patch_index"] = patch_index
        else:
            K = self._ep_K[ep_tok]  # (B, S) images per timestep of each token's episode
            has = valid & (K > 0)
            key = np.where(has, self._ep_img0[ep_tok] + c.timestep[src].astype(np.int64) * K, -1)  # first image of the frame
            firsts, first, inverse = np.unique(key[has], return_index=True, return_inverse=True)  # (F,)
            per = np.zeros(len(firsts), np.int64)
            per[inverse] = K[has]  # (F,) images of each frame
            images = concat_ranges(firsts, per)  # (I,) each frame's images in order
            image_window = np.repeat(np.nonzero(has)[0][first], per)  # (I,) the first window that shows each
            frame_index = np.full(key.shape, -1, np.int64)
            frame_index[has] = inverse
            out.update(patch_index=np.full(key.shape, -1, np.int64), frame_index=frame_index,
                       image_frame=np.repeat(np.arange(len(firsts)), per))
        lo, hi = self._img_start[images], self._img_start[images + 1]
        rows = concat_ranges(lo, hi - lo)
        out.update(self._gather_patches(rows, np.repeat(image_window, hi - lo)))
        return out


def holdout_split(cache: TokenCache, fraction: float, eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split the cache's episodes into training and held-out ones, per task: ``(train, held_out)`` index arrays.

    Each task holds out its last ``floor(fraction * n)`` eligible episodes (in cache order, so the split is the
    same on every run over the same data); a task with fewer than ``1 / fraction`` eligible episodes keeps all of
    them for training.

    Args:
        eligible: bool (episodes,): the episodes that may be held out (None: all), e.g. the demonstrations but
            not DAgger rounds added later, so that adding data does not move the held-out set.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"hold-out fraction must be in [0, 1), got {fraction!r}")
    task = np.asarray(cache.episodes)[:, EPISODE_COLUMNS.index("task_index")] if cache.num_episodes else np.zeros(0, np.int64)
    if eligible is None:
        eligible = np.ones(len(task), bool)
    eligible = np.asarray(eligible, bool)
    if eligible.shape != task.shape:
        raise ValueError(f"eligible must hold one flag per cache episode ({len(task)}), got shape {eligible.shape}")
    held = np.zeros(len(task), bool)
    for t in np.unique(task):
        eps = np.flatnonzero((task == t) & eligible)
        k = int(np.floor(fraction * len(eps) + 1e-9))
        if k:
            held[eps[-k:]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)
