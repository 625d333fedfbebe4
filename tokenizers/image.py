"""Images -> non-overlapping 16x16 patches in raster order (Gato, section 2.1).

Pixels are scaled to [-1, 1] and then divided by 4 (``sqrt(16)``):
``p = (x / 255 * 2 - 1) / 4``, so a patch holds values in [-0.25, 0.25].

Sizes not divisible by 16: the image is zero-padded at the bottom and on the
right to the next multiple of 16, with pixel value 0 (black, i.e. -0.25 after
scaling), before cutting. The top-left corner of patch ``(row, col)`` is pixel
``(16 row, 16 col)`` of the original image in every case.

Grayscale images (C = 1) are replicated to three channels.

>>> img = np.zeros((84, 84, 3), np.uint8)
>>> raw, pos = image_to_patches(img[None])
>>> raw.shape, pos[-1].tolist()
((1, 36, 16, 16, 3), [5, 5])
"""

from __future__ import annotations

import numpy as np

PATCH: int = 16
"""Patch side in pixels."""


def grid_shape(height: int, width: int) -> tuple[int, int]:
    """Number of patch rows and columns of an image (after padding)."""
    return -(-height // PATCH), -(-width // PATCH)


def image_to_patches(images: np.ndarray, field: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Cut a batch of images into raw patches.

    Args:
        images: uint8 ``(T, H, W, C)``, ``C`` in {1, 3}.
        field: field name used in error messages.

    Returns:
        ``(raw, pos)``: uint8 ``(T, R * Cols, 16, 16, 3)`` patches in raster
        order (row-major over the patch grid) and int32 ``(R * Cols, 2)``
        ``(row, col)`` of each patch.

    Raises:
        ValueError: wrong dtype (not uint8), wrong rank, or C not in {1, 3}.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"Field {field!r}: images must be uint8, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"Field {field!r}: images must have shape (T, H, W, C) with C in (1, 3), got shape {images.shape}"
        )
    t, h, w, c = images.shape
    rows, cols = grid_shape(h, w)
    if (h, w) != (rows * PATCH, cols * PATCH):
        padded = np.zeros((t, rows * PATCH, cols * PATCH, c), dtype=np.uint8)
        padded[:, :h, :w] = images
        images = padded
    # (T, rows, 16, cols, 16, C) -> (T, rows, cols, 16, 16, C)
    raw = images.reshape(t, rows, PATCH, cols, PATCH, c).transpose(0, 1, 3, 2, 4, 5)
    raw = raw.reshape(t, rows * cols, PATCH, PATCH, c)
    if c == 1:
        raw = np.broadcast_to(raw, (t, rows * cols, PATCH, PATCH, 3))
    raw = np.ascontiguousarray(raw)
    r, k = np.divmod(np.arange(rows * cols, dtype=np.int32), np.int32(cols))
    return raw, np.stack([r, k], axis=1).astype(np.int32)


def image_starts(patch_pos: np.ndarray) -> np.ndarray:
    """int64 ``(I,)``: the first row of every image in patch positions ``(P, 2)`` of images one after another
    (each image's patches start at ``(0, 0)``, in raster order)."""
    pp = np.asarray(patch_pos).reshape(-1, 2)
    return np.flatnonzero((pp[:, 0] == 0) & (pp[:, 1] == 0))


def patch_slots(tokens: np.ndarray, patch_id: int) -> np.ndarray:
    """int64, the shape of ``tokens``: ``k`` at the ``k``-th patch token (its row of the patches), -1 elsewhere
    (a model's ``patch_index`` for one token sequence)."""
    is_patch = np.asarray(tokens) == patch_id
    return np.where(is_patch, np.cumsum(is_patch) - 1, -1).astype(np.int64)


def concat_ranges(lo: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """int64 ``concatenate([arange(l, l + n) for l, n in zip(lo, counts)])``, vectorised (e.g. images' patch rows)."""
    lo, counts = np.asarray(lo, np.int64), np.asarray(counts, np.int64)
    return np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())


def normalize_patches(raw: np.ndarray) -> np.ndarray:
    """uint8 ``(P, 16, 16, 3)`` raw patches -> float32 ``(P, 3, 16, 16)`` in [-0.25, 0.25].

    Raises:
        ValueError: not uint8 or not shaped ``(..., 16, 16, 3)``.
    """
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.ndim < 3 or raw.shape[-3:] != (PATCH, PATCH, 3):
        raise ValueError(f"Raw patches must be uint8 (P, 16, 16, 3), got {raw.dtype} {raw.shape}")
    # channel-first: (..., 16, 16, 3) -> (..., 3, 16, 16)
    out = np.moveaxis(raw, -1, -3).astype(np.float32)
    out *= np.float32(2.0 / 255.0 / 4.0)
    out -= np.float32(0.25)
    return out
