"""The FSQ image tokenizer in numpy: exact quantisation on the grid, files, the layout's image codes, and episodes
written as ``<image>`` codes ``</image>`` (training and the torch twin: tests/agent/test_vq.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omnipolicy.tokenizers import FieldSpec, FSQConfig, ImageTokenizer, TimestepSpec, Tokenizer, VocabLayout
from omnipolicy.tokenizers.image_vq import (
    CONFIG_FILE,
    FSQ_EPS,
    WEIGHTS_FILE,
    fsq_bound,
    fsq_digits,
    fsq_index,
    fsq_values,
)

LEVELS = (8, 5, 5, 5)


def random_tokenizer(seed: int = 0, levels: tuple[int, ...] = LEVELS, hidden: int = 32) -> ImageTokenizer:
    """Untrained weights, scaled so that the latents spread over the FSQ range."""
    cfg = FSQConfig(levels, hidden)
    rng = np.random.default_rng(seed)
    weights = {name: rng.normal(0, 1 / np.sqrt(shape[0]) if len(shape) == 2 else 0.1, shape)
               for name, shape in cfg.weight_shapes().items()}
    return ImageTokenizer(cfg, weights)


def inverse_bound(digits: np.ndarray, levels: tuple[int, ...]) -> np.ndarray:
    """A latent whose bound is exactly ``digits`` (the FSQ grid values)."""
    L = np.asarray(levels, np.float64)
    half_l = (L - 1) * (1 + FSQ_EPS) / 2
    offset = np.where(L % 2 == 0, 0.5, 0.0)
    return np.arctanh((digits + offset) / half_l) - np.arctanh(offset / half_l)


def test_every_code_round_trips_through_its_digits_and_grid_values_quantise_exactly():
    codes = np.arange(1000)
    digits = fsq_digits(codes, LEVELS)  # (1000, 4) centred
    assert digits.min(0).tolist() == [-4, -2, -2, -2] and digits.max(0).tolist() == [3, 2, 2, 2]
    np.testing.assert_array_equal(fsq_index(digits, LEVELS), codes)
    z = inverse_bound(digits.astype(np.float64), LEVELS)
    np.testing.assert_allclose(fsq_bound(z, LEVELS), digits, atol=1e-12)  # on the grid, exactly
    np.testing.assert_array_equal(fsq_index(np.round(fsq_bound(z, LEVELS)).astype(np.int64), LEVELS), codes)
    # less than half a step off the grid value (inside the range) still lands on it
    rng = np.random.default_rng(0)
    half = np.asarray(LEVELS) // 2
    nudged = inverse_bound(np.clip(digits + rng.uniform(-0.45, 0.45, digits.shape), -half, half - 1 + np.asarray(LEVELS) % 2),
                           LEVELS)
    np.testing.assert_array_equal(fsq_index(np.round(fsq_bound(nudged, LEVELS)).astype(np.int64), LEVELS), codes)
    values = fsq_values(codes, LEVELS)
    assert values.min() == -1.0 and values.max() == 1.0


def test_the_bound_reaches_every_level_and_never_leaves_the_grid():
    z = np.linspace(-50, 50, 20001)[:, None].repeat(4, 1)
    digits = np.round(fsq_bound(z, LEVELS)).astype(np.int64)
    for i, L in enumerate(LEVELS):
        assert sorted(set(digits[:, i].tolist())) == list(range(-(L // 2), (L - 1) // 2 + 1))


def test_encode_gives_one_code_per_patch_and_decode_gives_back_the_image_shape():
    tok = random_tokenizer()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    codes = tok.encode(images)
    assert codes.shape == (5, 36) and codes.dtype == np.int64
    assert 0 <= codes.min() and codes.max() < 1000 and len(np.unique(codes)) > 20
    assert ImageTokenizer.codes_per_image(96, 96) == 36 and ImageTokenizer.codes_per_image(84, 84) == 36
    rec = tok.decode(codes, 96, 96)
    assert rec.shape == (5, 96, 96, 3) and rec.dtype == np.uint8
    # a patch's code depends on that patch only; decoding a code gives the same patch wherever it is
    moved = images.copy()
    moved[:, :16, :16] = images[:, 16:32, 16:32]
    assert (tok.encode(moved)[:, 0] == codes[:, 7]).all() and (tok.encode(moved)[:, 1:] == codes[:, 1:]).all()
    np.testing.assert_array_equal(tok.decode(codes, 96, 96)[:, 16:32, 16:32], tok.decode_patches(codes[:, 7]))
    gray = images[..., :1]
    np.testing.assert_array_equal(tok.encode(gray), tok.encode(np.repeat(gray, 3, axis=-1)))  # one channel as three
    with pytest.raises(ValueError, match=r"Codes of 96x96 images must have shape \(T, 36\), got \(5, 35\)"):
        tok.decode(codes[:, :35], 96, 96)
    with pytest.raises(ValueError, match=r"Image codes must be in \[0, 1000\), got 0..1000"):
        tok.decode_patches(np.array([0, 1000]))
    with pytest.raises(ValueError, match="images must be uint8"):
        tok.encode(images.astype(np.float32))


def test_save_and_load_give_the_same_codes_and_a_damaged_file_is_refused(tmp_path):
    tok = random_tokenizer()
    tok.info["steps"] = 12
    tok.save(tmp_path / "itok")
    back = ImageTokenizer.load(tmp_path / "itok")
    assert back.sha256 == tok.sha256 and back.config == tok.config and back.info == {"steps": 12}
    images = np.random.default_rng(2).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(back.encode(images), tok.encode(images))
    assert sorted(p.name for p in (tmp_path / "itok").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    # other weights under the recorded hash
    meta = json.loads((tmp_path / "itok" / CONFIG_FILE).read_text())
    random_tokenizer(seed=1).save(tmp_path / "other")
    (tmp_path / "other" / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="differs from the recorded .*the tokenizer is damaged"):
        ImageTokenizer.load(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match=f"No image tokenizer at .*missing {CONFIG_FILE}"):
        ImageTokenizer.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"weight 'enc.0.w' must be finite with shape \(768, 32\), got \(768, 31\)"):
        ImageTokenizer(tok.config, {**tok.weights, "enc.0.w": np.zeros((768, 31))})
    with pytest.raises(ValueError, match=r"FSQConfig.levels must be a non-empty list of ints >= 2, got \[8, 1\]"):
        FSQConfig((8, 1))


def test_layout_with_image_codes_saves_reloads_and_rejects_a_mismatch():
    tok = Tokenizer.default().with_image_tokenizer(random_tokenizer())
    layout = tok.layout
    plain = Tokenizer.default().layout
    assert layout.image_codes == 1000 and layout.image_model == tok.image.sha256[:16]
    assert layout.special == (*plain.special, "image_start", "image_end")
    assert (layout.separator_id, layout.pad_id, layout.patch_id) == (plain.separator_id, plain.pad_id, plain.patch_id)
    assert layout.ranges()["image"] == (plain.vocab_size + 2, plain.vocab_size + 1002)
    assert layout.vocab_size == plain.vocab_size + 1002
    assert VocabLayout.from_json(layout.to_json()) == layout
    assert "image_codes" not in plain.to_dict()  # layouts without codes keep the JSON they had
    other = Tokenizer.default().with_image_tokenizer(random_tokenizer(seed=1)).layout
    assert layout.diff(other) == [f"image_model: {layout.image_model!r} != {other.image_model!r}"]
    with pytest.raises(ValueError, match="VocabLayout does not match the image tokenizer"):
        Tokenizer(tok.text, layout=other, image=tok.image)
    with pytest.raises(ValueError, match="VocabLayout does not match the image tokenizer"):
        Tokenizer(tok.text, layout=layout)  # codes in the layout, no tokenizer to make them
    with pytest.raises(ValueError, match=r"image_codes=10 needs the specials \['image_start', 'image_end'\]"):
        VocabLayout(text_size=10, image_codes=10, image_model="abc")
    with pytest.raises(ValueError, match="image_model is 'abc' but image_codes is 0"):
        VocabLayout(text_size=10, image_model="abc")


def test_an_episode_with_vq_images_has_image_markers_around_36_codes_per_96x96_image():
    spec = TimestepSpec(
        (FieldSpec("front", "image", (96, 96, 3), "uint8"), FieldSpec("wrist", "image", (96, 96, 3), "uint8"),
         FieldSpec("joints", "continuous", (3,), "float32"), FieldSpec("instruction", "text", (), "str")),
        FieldSpec("action", "continuous", (2,), "float32", low=(-1, -1), high=(1, 1)),
    )
    tok = Tokenizer.default().with_image_tokenizer(random_tokenizer())
    lay = tok.layout
    rng = np.random.default_rng(3)
    obs = {"front": rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8),
           "wrist": rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8),
           "joints": rng.normal(size=(4, 3)).astype(np.float32), "instruction": ["lift the cube"] * 4}
    ep = tok.tokenize_episode(spec, obs, rng.uniform(-1, 1, (4, 2)))
    seg = {name: (start, stop) for name, _, start, stop in ep.segments}
    assert [s[0] for s in ep.segments] == ["instruction", "front", "wrist", "joints", "|", "action"]
    assert ep.patches.shape[0] == 0 and ep.patch_pos.shape == (0, 2)  # no patch slots at all
    steps = ep.per_timestep()
    for name in ("front", "wrist"):
        start, stop = seg[name]
        assert stop - start == 38
        block = steps[:, start:stop]
        assert (block[:, 0] == lay.image_start_id).all() and (block[:, -1] == lay.image_end_id).all()
        np.testing.assert_array_equal(block[:, 1:-1] - lay.image_offset, tok.image.encode(obs[name]))
        assert not ep.per_timestep(ep.loss_mask)[:, start:stop].any()  # images carry no loss
    assert not (ep.tokens == lay.patch_id).any() and ep.tokens.max() < lay.vocab_size
    # the same episode without the image tokenizer: 36 patch slots per image instead
    plain = Tokenizer.default().tokenize_episode(spec, obs, rng.uniform(-1, 1, (4, 2)))
    assert plain.tokens_per_timestep == ep.tokens_per_timestep - 4 and len(plain.patches) == 4 * 72
    # image slots (the resampler's) are a layout of patches: a tokenizer writing codes refuses them
    with pytest.raises(ValueError, match=r"image_slots=4 lays out image slots, but this tokenizer writes images as "
                                         r"the codes of its image tokenizer; expected image_slots=None"):
        tok.tokenize_episode(spec, obs, rng.uniform(-1, 1, (4, 2)), image_slots=4)
