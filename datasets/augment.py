"""Training-time image augmentation on cached patches: DrQ's random shift (Kostrikov et al. 2020).

Each image is padded by ``pad`` pixels on every side, repeating its border pixels, and a crop of its own size
is taken at a random offset in ``[0, 2 pad]`` per axis: the picture moves by up to ``pad`` pixels in each
direction. The cache holds images as 16x16 patches in raster order, so an image is reassembled from its
patches, shifted, and cut again. Every image of one training window moves by the same offset (the motion
between the frames of a window stays what the game showed), and different windows move independently.

>>> img = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(1, 32, 32, 3)
>>> raw, _ = image_to_patches(img)
>>> patches = raw.reshape(4, 16, 16, 3)
>>> same = shift_patches(patches, np.array([0]), np.array([[2, 2]]), np.array([[4, 4]]), pad=4)
>>> bool((same == patches).all())
True
>>> down = shift_patches(patches, np.array([0]), np.array([[2, 2]]), np.array([[2, 4]]), pad=4)  # 2 px down
>>> bool((down[0, 2:] == patches[0, :-2]).all()), bool((down[0, :2] == patches[0, :1]).all())
(True, True)
"""

from __future__ import annotations

import numpy as np

from omnipolicy.tokenizers.image import PATCH, image_to_patches


def shift_patches(patches: np.ndarray, image_start: np.ndarray, grid: np.ndarray, offsets: np.ndarray,
                  pad: int) -> np.ndarray:
    """Shift whole images given as patch rows.

    Args:
        patches: uint8 ``(P, 16, 16, 3)``: the images' patches one image after another, each in raster order.
        image_start: int ``(I,)`` first row in ``patches`` of each image.
        grid: int ``(I, 2)`` patch rows and columns of each image (its patches are ``rows * cols`` rows of
            ``patches`` from its start).
        offsets: int ``(I, 2)`` crop offset (rows, columns) of each image, each in ``[0, 2 pad]``; ``(pad, pad)``
            leaves an image as it is.
        pad: border in pixels.

    Returns:
        uint8 ``(P, 16, 16, 3)``: the shifted images' patches, in the rows of the input.

    Raises:
        ValueError: bad shapes, or offsets outside ``[0, 2 pad]``.
    """
    patches = np.asarray(patches)
    if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[1:] != (PATCH, PATCH, 3):
        raise ValueError(f"patches must be uint8 (P, 16, 16, 3), got {patches.dtype} {patches.shape}")
    start = np.asarray(image_start, np.int64).reshape(-1)
    grid, offsets = np.asarray(grid, np.int64).reshape(-1, 2), np.asarray(offsets, np.int64).reshape(-1, 2)
    if not (len(start) == len(grid) == len(offsets)):
        raise ValueError(f"image_start, grid and offsets must have one entry per image, got "
                         f"{len(start)}, {len(grid)} and {len(offsets)}")
    if pad < 0 or (offsets < 0).any() or (offsets > 2 * pad).any():
        raise ValueError(f"offsets must lie in [0, 2 * pad] = [0, {2 * pad}] with pad >= 0, got pad {pad} and "
                         f"offsets in [{offsets.min(initial=0)}, {offsets.max(initial=0)}]")
    out = patches.copy()
    for r, c in np.unique(grid, axis=0):
        which = np.flatnonzero((grid[:, 0] == r) & (grid[:, 1] == c))
        rows = start[which, None] + np.arange(r * c)  # (G, r c)
        g, h, w = len(which), r * PATCH, c * PATCH
        images = patches[rows].reshape(g, r, c, PATCH, PATCH, 3).transpose(0, 1, 3, 2, 4, 5).reshape(g, h, w, 3)
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
        shifted = np.empty_like(images)
        for dy, dx in np.unique(offsets[which], axis=0):  # one slice per distinct offset (few: one per window)
            same = np.flatnonzero((offsets[which, 0] == dy) & (offsets[which, 1] == dx))
            shifted[same] = padded[same, dy:dy + h, dx:dx + w]
        cut, _ = image_to_patches(shifted)
        out[rows.reshape(-1)] = cut.reshape(-1, PATCH, PATCH, 3)
    return out
