"""DrQ's random shift: whole images move by one offset per training window, border pixels repeated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omnipolicy.datasets.augment import shift_patches
from omnipolicy.datasets.cache import TokenCache
from omnipolicy.datasets.loader import WindowLoader
from omnipolicy.tokenizers import Tokenizer, normalize_patches
from omnipolicy.tokenizers.image import image_to_patches

from .test_cache import stores, tok  # noqa: F401  (fixtures)


def reference_shift(image: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    """The padded (multiple-of-16) image, edge-padded by ``pad`` and cropped at ``(dy, dx)``, as patches."""
    raw, _ = image_to_patches(image[None])
    rows, cols = -(-image.shape[0] // 16), -(-image.shape[1] // 16)
    whole = raw[0].reshape(rows, cols, 16, 16, 3).transpose(0, 2, 1, 3, 4).reshape(rows * 16, cols * 16, 3)
    moved = np.pad(whole, ((pad, pad), (pad, pad), (0, 0)), mode="edge")[dy:dy + rows * 16, dx:dx + cols * 16]
    return image_to_patches(moved[None])[0][0]


def test_shift_patches_moves_each_image_by_its_offset() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20, 36, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
              rng.integers(0, 256, (20, 36, 3), dtype=np.uint8)]
    cut = [image_to_patches(im[None])[0][0] for im in images]  # 2x3, 2x2, 2x3 patches
    patches = np.concatenate(cut)
    start = np.array([0, 6, 10])
    grid = np.array([[2, 3], [2, 2], [2, 3]])
    offsets = np.array([[0, 8], [4, 4], [8, 1]])
    out = shift_patches(patches, start, grid, offsets, pad=4)
    for im, s, n, (dy, dx) in zip(images, start, (6, 4, 6), offsets):
        np.testing.assert_array_equal(out[s:s + n], reference_shift(im, dy, dx, 4))
    np.testing.assert_array_equal(shift_patches(patches, start, grid, np.full((3, 2), 4), pad=4), patches)
    with pytest.raises(ValueError, match=r"offsets must lie in \[0, 2 \* pad\] = \[0, 8\]"):
        shift_patches(patches, start, grid, np.array([[0, 9], [0, 0], [0, 0]]), pad=4)
    with pytest.raises(ValueError, match="one entry per image, got 3, 2 and 3"):
        shift_patches(patches, start, grid[:2], offsets, pad=4)


def test_loader_shifts_every_image_of_a_window_by_one_offset(stores: Path, tmp_path: Path, tok: Tokenizer) -> None:  # noqa: F811
    cache = TokenCache.build([stores], tok, tmp_path / "cache", progress=False)
    kw = dict(context=60, batch_size=12, task_weights={"toy/pixels-v0": 1.0}, seed=4)
    plain, moved = WindowLoader(cache, **kw).sample(), WindowLoader(cache, random_shift=3, **kw).sample()
    np.testing.assert_array_equal(plain["tokens"], moved["tokens"])  # the same windows
    np.testing.assert_array_equal(plain["patch_pos"], moved["patch_pos"])
    # each plain patch is a cache row (random pixels: exactly one match)
    every = normalize_patches(np.asarray(cache.patches)).reshape(len(cache.patches), -1)
    rows = np.array([np.flatnonzero((every == p.reshape(1, -1)).all(axis=1))[0] for p in plain["patches"]])
    starts = np.flatnonzero((np.asarray(cache.patch_pos) == 0).all(axis=1))
    image_of = np.searchsorted(starts, rows, side="right") - 1
    found = []
    for r in range(kw["batch_size"]):
        idx = moved["patch_index"][r][moved["patch_index"][r] >= 0]
        if not len(idx):
            continue
        matches = []
        for dy in range(7):
            for dx in range(7):
                ok = True
                for i in idx:
                    first = starts[image_of[i]]
                    image = np.asarray(cache.patches[first:first + 6]).reshape(2, 3, 16, 16, 3)
                    image = image.transpose(0, 2, 1, 3, 4).reshape(32, 48, 3)
                    want = reference_shift(image, dy, dx, 3)[rows[i] - first]
                    ok &= bool(np.array_equal(normalize_patches(want[None])[0], moved["patches"][i]))
                matches.append((dy, dx)) if ok else None
        assert matches, f"window {r}: no single offset explains its patches"
        found.append(matches[0])
    assert len(set(found)) > 1  # windows move independently
    with pytest.raises(ValueError, match="random_shift must be an int >= 0"):
        WindowLoader(cache, random_shift=-1, **kw)


@pytest.mark.parametrize("slots", [2, 0])  # a resampler's slots per image; 0: cross-attention's frames
def test_whole_image_windows_shift_each_image_as_a_whole(stores: Path, tmp_path: Path, tok: Tokenizer,  # noqa: F811
                                                          slots: int) -> None:
    cache = TokenCache.build([stores], tok, tmp_path / "cache", progress=False, image_slots=slots)
    kw = dict(context=40, batch_size=6, task_weights={"toy/pixels-v0": 1.0}, seed=2)
    plain, moved = WindowLoader(cache, **kw).sample(), WindowLoader(cache, random_shift=2, **kw).sample()
    np.testing.assert_array_equal(plain["tokens"], moved["tokens"])
    assert plain["patches"].shape == moved["patches"].shape and len(plain["patches"]) % 6 == 0
    for first in range(0, len(plain["patches"]), 6):  # every image (2x3 patches) is its plain self, shifted once
        raw = np.rint((plain["patches"][first:first + 6] + 0.25) * 4 * 255 / 2).astype(np.uint8)
        image = np.moveaxis(raw, 1, -1).reshape(2, 3, 16, 16, 3).transpose(0, 2, 1, 3, 4).reshape(32, 48, 3)
        got = moved["patches"][first:first + 6]
        assert any(np.array_equal(normalize_patches(reference_shift(image, dy, dx, 2)), got)
                   for dy in range(5) for dx in range(5))
