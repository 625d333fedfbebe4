"""Images: 16x16 patches in raster order, the padding rule, scaling, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnipolicy.tokenizers import image_to_patches, normalize_patches

GOLDEN = json.loads((Path(__file__).parent / "data" / "tokenizer_golden.json").read_text())


def _reassemble(raw: np.ndarray, pos: np.ndarray, h: int, w: int, c: int) -> np.ndarray:
    """Put patches back at 16 * (row, col) and crop: the inverse of image_to_patches."""
    t = raw.shape[0]
    rows, cols = pos[:, 0].max() + 1, pos[:, 1].max() + 1
    canvas = np.zeros((t, rows * 16, cols * 16, 3), np.uint8)
    for k, (r, q) in enumerate(pos):
        canvas[:, r * 16:(r + 1) * 16, q * 16:(q + 1) * 16] = raw[:, k]
    return canvas[:, :h, :w, :c], canvas


def test_raster_order_and_positions() -> None:
    # Pixel value = index of the 16x16 block it belongs to; 84x84 -> 6x6 grid after padding to 96x96.
    img = np.zeros((2, 84, 84, 3), np.uint8)
    yy, xx = np.mgrid[0:84, 0:84]
    img[:] = ((yy // 16) * 6 + xx // 16)[None, :, :, None]
    raw, pos = image_to_patches(img)
    assert raw.shape == (2, 36, 16, 16, 3) and raw.dtype == np.uint8
    assert pos.dtype == np.int32 and pos.tolist() == [[r, c] for r in range(6) for c in range(6)]
    for k in range(36):
        valid = raw[0, k][:84 - 16 * pos[k, 0], :84 - 16 * pos[k, 1]]
        assert (valid == k).all()


def test_padding_is_black_at_bottom_and_right() -> None:
    img = np.full((1, 20, 35, 3), 200, np.uint8)
    raw, pos = image_to_patches(img)
    assert raw.shape[1] == 6 and pos[-1].tolist() == [1, 2]  # ceil(20/16) x ceil(35/16) = 2 x 3
    back, canvas = _reassemble(raw, pos, 20, 35, 3)
    np.testing.assert_array_equal(back, img)
    assert (canvas[:, 20:] == 0).all() and (canvas[:, :, 35:] == 0).all()
    assert normalize_patches(raw.reshape(-1, 16, 16, 3))[-1, :, -1, -1].tolist() == [-0.25] * 3


def test_grayscale_replicated_to_three_channels() -> None:
    img = np.arange(32 * 32, dtype=np.uint32).reshape(1, 32, 32, 1).astype(np.uint8)
    raw, _ = image_to_patches(img)
    assert raw.shape == (1, 4, 16, 16, 3)
    assert (raw[..., 0] == raw[..., 1]).all() and (raw[..., 0] == raw[..., 2]).all()
    np.testing.assert_array_equal(raw[0, 1, :, :, 0], img[0, :16, 16:, 0])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 50), st.integers(1, 50), st.sampled_from([1, 3]), st.integers(0, 2**32 - 1))
def test_patches_reassemble_to_the_image(t: int, h: int, w: int, c: int, seed: int) -> None:
    img = np.random.default_rng(seed).integers(0, 256, (t, h, w, c), dtype=np.uint8)
    raw, pos = image_to_patches(img)
    assert raw.shape == (t, -(-h // 16) * -(-w // 16), 16, 16, 3)
    back, _ = _reassemble(raw, pos, h, w, c)
    np.testing.assert_array_equal(back, img)
    norm = normalize_patches(raw.reshape(-1, 16, 16, 3))
    assert norm.dtype == np.float32 and norm.shape == (raw.shape[0] * raw.shape[1], 3, 16, 16)
    assert norm.min() >= -0.25 and norm.max() <= 0.25


def test_golden_pixel_scaling() -> None:
    cases = GOLDEN["image"]
    raw = np.zeros((len(cases), 16, 16, 3), np.uint8)
    for k, case in enumerate(cases):
        raw[k] = case["pixel"]
    got = normalize_patches(raw)
    np.testing.assert_allclose(got[:, 1, 7, 3], [c["value"] for c in cases], atol=1e-7)
    assert got[0].max() == -0.25 and got[-1].min() == 0.25


@pytest.mark.parametrize(
    "img, match",
    [
        (np.zeros((1, 16, 16, 3), np.float32), r"Field 'cam': images must be uint8, got dtype float32"),
        (np.zeros((16, 16, 3), np.uint8), r"Field 'cam': images must have shape \(T, H, W, C\) with C in \(1, 3\), got shape \(16, 16, 3\)"),
        (np.zeros((1, 16, 16, 4), np.uint8), r"got shape \(1, 16, 16, 4\)"),
    ],
)
def test_bad_images_raise(img: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        image_to_patches(img, field="cam")


def test_normalize_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError, match=r"Raw patches must be uint8 \(P, 16, 16, 3\), got uint8 \(2, 3, 16, 16\)"):
        normalize_patches(np.zeros((2, 3, 16, 16), np.uint8))
