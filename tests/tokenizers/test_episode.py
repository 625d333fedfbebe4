"""Episodes: the timestep layout, loss mask, positions, action round trips, vocab layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnipolicy.tokenizers import FieldSpec, TimestepSpec, Tokenizer, VocabLayout, normalize_patches

GOLDEN = json.loads((Path(__file__).parent / "data" / "tokenizer_golden.json").read_text())


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


# Deliberately unsorted keys: the tokenizer must sort them.
MIXED = TimestepSpec(
    observation=(
        FieldSpec("z_state", "continuous", (2, 3), "float32"),
        FieldSpec("b_cam", "image", (20, 33, 3), "uint8"),
        FieldSpec("instruction", "text", (), "str"),
        FieldSpec("a_buttons", "discrete", (2,), "int64", n=5),
        FieldSpec("a_cam", "image", (16, 16, 1), "uint8"),
    ),
    action=FieldSpec("action", "continuous", (2,), "float32", low=(-2.0, 0.0), high=(2.0, 1.0)),
)


def _mixed_episode(t: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    texts = ["Open the drawer.", "Close it \u2581 now!", ""]
    obs = {
        "z_state": rng.normal(scale=50, size=(t, 2, 3)).astype(np.float32),
        "b_cam": rng.integers(0, 256, (t, 20, 33, 3), dtype=np.uint8),
        "instruction": [texts[i % 3] for i in range(t)],
        "a_buttons": rng.integers(0, 5, (t, 2)),
        "a_cam": rng.integers(0, 256, (t, 16, 16, 1), dtype=np.uint8),
        "ignored_extra": np.zeros(t),
    }
    actions = np.stack([rng.uniform(-2.5, 2.5, t), rng.uniform(-0.2, 1.2, t)], axis=1).astype(np.float32)
    return obs, actions


def test_mixed_timestep_layout(tok: Tokenizer) -> None:
    lay, t = tok.layout, 6
    obs, actions = _mixed_episode(t)
    ep = tok.tokenize_episode(MIXED, obs, actions)
    n_text = max(len(tok.encode_text(s)) for s in obs["instruction"])
    n_patch = 1 + 2 * 3  # a_cam 16x16 -> 1 patch, b_cam 20x33 -> 2 x 3 patches
    length = n_text + n_patch + 2 + 6 + 1 + 2
    assert (ep.tokens_per_timestep, ep.obs_tokens_per_timestep, ep.action_size) == (length, length - 2, 2)
    assert ep.segments == (("instruction", "text", 0, n_text), ("a_cam", "image", n_text, n_text + 1),
                           ("b_cam", "image", n_text + 1, n_text + 7), ("a_buttons", "discrete", n_text + 7, n_text + 9),
                           ("z_state", "continuous", n_text + 9, n_text + 15), ("|", "separator", length - 3, length - 2),
                           ("action", "action", length - 2, length))
    assert ep.tokens.shape == ep.loss_mask.shape == ep.local_pos.shape == ep.timestep.shape == (t * length,)
    assert ep.tokens.dtype == np.int32 and ep.local_pos.dtype == np.int32 and ep.timestep.dtype == np.int32
    np.testing.assert_array_equal(ep.local_pos, np.tile(np.arange(length), t))
    np.testing.assert_array_equal(ep.timestep, np.repeat(np.arange(t), length))

    rows, loss = ep.per_timestep(), ep.per_timestep(ep.loss_mask)
    for i in range(t):
        row, m = rows[i], loss[i]
        ids = tok.encode_text(obs["instruction"][i])
        np.testing.assert_array_equal(row[:len(ids)], ids)
        assert (row[len(ids):n_text] == lay.pad_id).all()
        assert m[:len(ids)].all() and not m[len(ids):n_text].any()  # loss on text, never on pad
        assert tok.decode_text(row[:n_text][row[:n_text] != lay.pad_id]) == obs["instruction"][i]
        assert (row[n_text:n_text + n_patch] == lay.patch_id).all()
        c = n_text + n_patch
        np.testing.assert_array_equal(row[c:c + 2] - lay.discrete_offset, obs["a_buttons"][i])  # "a_buttons" < "z_state"
        z = row[c + 2:c + 8] - lay.continuous_offset
        assert ((z >= 0) & (z < 1024)).all()
        assert row[length - 3] == lay.separator_id
        assert not m[n_text:length - 2].any() and m[length - 2:].all()  # loss on actions only after the text

    # Patches: the k-th patch token <-> patches[k]; a_cam before b_cam, raster order inside each image.
    assert ep.patches.shape == (t * n_patch, 3, 16, 16) and ep.patches.dtype == np.float32
    assert np.count_nonzero(ep.tokens == lay.patch_id) == ep.patches.shape[0]
    k = n_patch * 4  # timestep 4
    np.testing.assert_allclose(ep.patches[k, 2], (obs["a_cam"][4, :, :, 0] / 255 * 2 - 1) / 4, atol=1e-6)
    np.testing.assert_allclose(ep.patches[k + 5, 0, :4, :16], (obs["b_cam"][4, 16:20, 16:32, 0] / 255 * 2 - 1) / 4,
                               atol=1e-6)  # b_cam patch (1, 1): rows 16..19 real, the rest padding
    assert (ep.patches[k + 5, :, 4:, :] == -0.25).all()
    assert ep.patch_pos.tolist()[:n_patch] == [[0, 0], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    np.testing.assert_array_equal(ep.patch_pos, np.tile(ep.patch_pos[:n_patch], (t, 1)))

    # Clipping is counted per continuous field.
    assert ep.clipped["z_state"] == int(np.count_nonzero(np.abs(obs["z_state"]) > 256))
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 1.0])
    assert ep.clipped["action"] == int(np.count_nonzero((actions < low) | (actions > high)))

    # Raw patches normalise to the same floats.
    raw = tok.tokenize_episode(MIXED, obs, actions, raw_patches=True)
    assert raw.patches.dtype == np.uint8 and raw.patches.shape == (t * n_patch, 16, 16, 3)
    np.testing.assert_array_equal(normalize_patches(raw.patches), ep.patches)
    np.testing.assert_array_equal(raw.tokens, ep.tokens)


def test_vectorised_equals_one_timestep_at_a_time(tok: Tokenizer) -> None:
    obs, actions = _mixed_episode(5, seed=3)
    obs["instruction"] = ["Reach the goal."] * 5  # equal text lengths, so per-step layouts agree
    whole = tok.tokenize_episode(MIXED, obs, actions)
    steps = [tok.tokenize_episode(MIXED, {k: v[i:i + 1] for k, v in obs.items()}, actions[i:i + 1]) for i in range(5)]
    np.testing.assert_array_equal(whole.tokens, np.concatenate([s.tokens for s in steps]))
    np.testing.assert_array_equal(whole.loss_mask, np.concatenate([s.loss_mask for s in steps]))
    np.testing.assert_array_equal(whole.patches, np.concatenate([s.patches for s in steps]))


def test_without_actions_ends_with_separator(tok: Tokenizer) -> None:
    obs, actions = _mixed_episode(4)
    with_a = tok.tokenize_episode(MIXED, obs, actions)
    ep = tok.tokenize_episode(MIXED, obs, None)
    assert ep.action_size == 0 and ep.tokens_per_timestep == ep.obs_tokens_per_timestep == with_a.obs_tokens_per_timestep
    assert (ep.per_timestep()[:, -1] == tok.layout.separator_id).all()
    np.testing.assert_array_equal(ep.per_timestep(), with_a.per_timestep()[:, :with_a.obs_tokens_per_timestep])
    assert "action" not in ep.clipped and ep.action_tokens().shape == (4, 0)


@pytest.mark.parametrize(
    "action_field",
    [
        FieldSpec("action", "continuous", (3,), "float32"),  # mu-law
        FieldSpec("action", "continuous", (2, 2), "float64", low=(-1, -2, -3, 0), high=(1, 2, 3, 10)),  # bounded
        FieldSpec("action", "discrete", (), "int64", n=18),
        FieldSpec("action", "discrete", (1,), "int32", n=4),
        FieldSpec("action", "discrete", (3,), "int64", n=1024),
    ],
)
@settings(max_examples=25, deadline=None)
@given(t=st.integers(0, 9), seed=st.integers(0, 2**32 - 1))
def test_decode_actions_round_trip(tok: Tokenizer, action_field: FieldSpec, t: int, seed: int) -> None:
    spec = TimestepSpec((FieldSpec("obs", "continuous", (4,), "float32"),), action_field)
    rng = np.random.default_rng(seed)
    shape = (t, *action_field.shape)
    if action_field.kind == "discrete":
        actions = rng.integers(0, action_field.n, shape).astype(action_field.dtype)
    elif action_field.bounded:
        low = np.reshape(action_field.low, action_field.shape)
        high = np.reshape(action_field.high, action_field.shape)
        actions = rng.uniform(low, high, shape)
    else:
        actions = (rng.choice([-1, 1], shape) * 10 ** rng.uniform(-5, 2.4, shape)).astype(np.float32)
    ep = tok.tokenize_episode(spec, {"obs": rng.normal(size=(t, 4))}, actions)
    ranges = tok.action_token_ranges(spec)
    a_tok = ep.action_tokens()
    assert ((a_tok >= ranges[:, 0]) & (a_tok < ranges[:, 1])).all()
    assert ep.per_timestep(ep.loss_mask)[:, ep.obs_tokens_per_timestep:].all()
    back = tok.decode_actions(spec, a_tok)
    assert back.shape == actions.shape and back.dtype == np.dtype(action_field.dtype)
    if action_field.kind == "discrete":
        np.testing.assert_array_equal(back, actions)
    elif action_field.bounded:
        half_bin = (high - low) / 1024
        assert (np.abs(back - actions) <= half_bin * (1 + 1e-6)).all()
    else:
        # Within half a bin in the companded space (mu-law), relative in value space.
        f = lambda x: np.sign(x) * np.log1p(np.abs(x) * 100) / np.log1p(256 * 100)  # noqa: E731
        assert (np.abs(f(back.astype(np.float64)) - f(actions.astype(np.float64))) <= 1 / 1024 + 1e-6).all()


def test_action_token_ranges(tok: Tokenizer) -> None:
    lay = tok.layout
    cont = TimestepSpec((), FieldSpec("action", "continuous", (4,), "float32", low=(-1,) * 4, high=(1,) * 4))
    disc = TimestepSpec((), FieldSpec("action", "discrete", (), "int64", n=6))
    r = tok.action_token_ranges(cont)
    assert r.dtype == np.int64 and r.tolist() == [[lay.continuous_offset, lay.continuous_offset + 1024]] * 4
    assert tok.action_token_ranges(disc).tolist() == [[lay.discrete_offset, lay.discrete_offset + 6]]


def test_decode_actions_errors(tok: Tokenizer) -> None:
    disc = TimestepSpec((), FieldSpec("action", "discrete", (), "int64", n=6))
    lo = tok.layout.discrete_offset
    with pytest.raises(ValueError, match=rf"Action token {lo + 6} at index \(1, 0\) is outside the valid range "
                                         rf"\[{lo}, {lo + 6}\) for discrete action 'action'"):
        tok.decode_actions(disc, np.array([[lo], [lo + 6]]))
    with pytest.raises(ValueError, match=r"Action tokens must have shape \(\.\.\., 1\) for action 'action', got \(2, 2\)"):
        tok.decode_actions(disc, np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="Action tokens must be integers, got dtype float64"):
        tok.decode_actions(disc, np.zeros((2, 1)))


def test_episode_errors_name_the_field(tok: Tokenizer) -> None:
    obs, actions = _mixed_episode(3)
    with pytest.raises(KeyError, match="Observation field 'z_state' is missing"):
        tok.tokenize_episode(MIXED, {k: v for k, v in obs.items() if k != "z_state"}, actions)
    bad = dict(obs, z_state=obs["z_state"].copy())
    bad["z_state"][1, 0, 2] = np.nan
    with pytest.raises(ValueError, match=r"Field 'z_state': continuous values must be finite"):
        tok.tokenize_episode(MIXED, bad, actions)
    with pytest.raises(ValueError, match=r"Field 'action': continuous values must be finite"):
        tok.tokenize_episode(MIXED, obs, np.where(actions > 0, np.inf, actions))
    with pytest.raises(ValueError, match=r"Observation field 'z_state' \(continuous\) must have shape \(3, 2, 3\), got \(3, 6\)"):
        tok.tokenize_episode(MIXED, dict(obs, z_state=obs["z_state"].reshape(3, 6)), actions)
    with pytest.raises(ValueError, match=r"Observation field 'instruction' has 2 timesteps, expected 3"):
        tok.tokenize_episode(MIXED, dict(obs, instruction=obs["instruction"][:2]), actions)
    with pytest.raises(ValueError, match=r"Field 'a_buttons': discrete value 5 is outside the allowed range \[0, 5\)"):
        tok.tokenize_episode(MIXED, dict(obs, a_buttons=np.full((3, 2), 5)), actions)
    with pytest.raises(ValueError, match=r"Actions must have shape \(T, 2\) for field 'action', got \(3, 3\)"):
        tok.tokenize_episode(MIXED, obs, np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"Field 'b_cam': images must be uint8, got dtype float64"):
        tok.tokenize_episode(MIXED, dict(obs, b_cam=obs["b_cam"].astype(np.float64)), actions)


def test_empty_episode(tok: Tokenizer) -> None:
    obs, actions = _mixed_episode(0)
    ep = tok.tokenize_episode(MIXED, obs, actions)
    assert ep.tokens.shape == (0,) and ep.patches.shape == (0, 3, 16, 16) and ep.num_timesteps == 0


# ------------------------------------------------------------------ layout
def test_default_layout(tok: Tokenizer) -> None:
    lay = tok.layout
    assert lay.text_size == tok.text.vocab_size and lay.text_model == tok.text.sha256[:16]
    assert VocabLayout.from_json(lay.to_json()) == lay
    assert VocabLayout.from_json(lay.to_json()).to_json() == lay.to_json()
    with pytest.raises(ValueError, match=rf"VocabLayout does not match the text model: .*text_size: 1000 != {tok.layout.text_size}"):
        Tokenizer(tok.text, VocabLayout(text_size=1000))


def test_golden_layout_offsets() -> None:
    for case in GOLDEN["layout"]:
        lay = VocabLayout(text_size=case["text_size"])
        r = lay.ranges()
        assert list(r["continuous"]) == case["continuous"] and list(r["discrete"]) == case["discrete"]
        assert (lay.separator_id, lay.pad_id, lay.patch_id, lay.vocab_size) == (
            case["separator"], case["pad"], case["patch"], case["vocab_size"])


@settings(max_examples=50, deadline=None)
@given(text_size=st.integers(1, 100_000), extra=st.lists(st.text("abcxyz_", min_size=1, max_size=6), max_size=4,
                                                         unique=True))
def test_layout_ids_never_collide_and_json_round_trips(text_size: int, extra: list[str]) -> None:
    special = ("separator", "pad", "patch") + tuple(e for e in extra if e not in ("separator", "pad", "patch"))
    lay = VocabLayout(text_size=text_size, special=special, text_model="abc")
    covered = np.zeros(lay.vocab_size, np.int64)
    for start, stop in lay.ranges().values():
        covered[start:stop] += 1
    assert (covered == 1).all()  # disjoint and together exactly [0, vocab_size)
    assert len({lay.special_id(s) for s in special}) == len(special)
    text = lay.to_json()
    again = VocabLayout.from_json(text)
    assert again == lay and again.to_json() == text and lay.diff(again) == []


# ------------------------------------------------------- random specs (property)
SPECIAL_VALUES = [0.0, 1.0, -1.0, 256.0, -256.0, 1e30, -1e30, 1e-30]


@st.composite
def episodes(draw):
    """A random TimestepSpec with matching random data (values include +-1, 0, +-256, huge)."""
    fields, data = [], {}
    t = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["continuous", "continuous", "discrete", "image", "text"]))
        name = f"f{draw(st.integers(0, 99)):02d}_{i}"
        if kind == "continuous":
            shape = tuple(draw(st.lists(st.integers(1, 4), max_size=2)))
            dtype = draw(st.sampled_from(["float16", "float32", "float64", "int32"]))
            bounded = draw(st.booleans())
            low, high = ((-2.0,), (3.0,)) if bounded else (None, None)
            values = rng.choice(SPECIAL_VALUES, (t, *shape)) * rng.choice([0, 1], (t, *shape)) + rng.normal(size=(t, *shape))
            limit = {"float16": 6e4, "int32": 1e6}.get(dtype, np.inf)  # stay finite in the target dtype
            data[name] = np.clip(values, -limit, limit).astype(dtype)
            fields.append(FieldSpec(name, kind, shape, dtype, low=low, high=high))
        elif kind == "discrete":
            shape, n = tuple(draw(st.lists(st.integers(1, 3), max_size=2))), draw(st.integers(1, 1024))
            data[name] = rng.integers(0, n, (t, *shape))
            fields.append(FieldSpec(name, kind, shape, "int64", n=n))
        elif kind == "image":
            shape = (draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.sampled_from([1, 3])))
            data[name] = rng.integers(0, 256, (t, *shape), dtype=np.uint8)
            fields.append(FieldSpec(name, kind, shape, "uint8"))
        else:
            data[name] = [draw(st.text(max_size=12)) for _ in range(t)]
            fields.append(FieldSpec(name, kind, (), "str"))
    if draw(st.booleans()):
        action = FieldSpec("action", "discrete", (), "int64", n=draw(st.integers(1, 1024)))
        actions = rng.integers(0, action.n, t)
    else:
        action = FieldSpec("action", "continuous", (draw(st.integers(1, 6)),), "float32")
        actions = rng.choice(SPECIAL_VALUES, (t, action.shape[0])).astype(np.float32)
    return TimestepSpec(tuple(fields), action), data, actions


@settings(max_examples=80, deadline=None)
@given(episodes(), st.booleans())
def test_random_specs_keep_the_invariants(tok: Tokenizer, case, with_actions: bool) -> None:
    spec, obs, actions = case
    lay = tok.layout
    ep = tok.tokenize_episode(spec, obs, actions if with_actions else None)
    t, length = len(actions), ep.tokens_per_timestep
    assert ep.tokens.shape == (t * length,) and ep.num_timesteps == t
    rows, loss = ep.per_timestep(), ep.per_timestep(ep.loss_mask)
    # Segments tile the timestep in Gato's order: text, images, tensors (sorted), separator, action.
    order = {"text": 0, "image": 1, "continuous": 2, "discrete": 2, "separator": 3, "action": 4}
    assert [s[2] for s in ep.segments] == [0] + [s[3] for s in ep.segments[:-1]] and ep.segments[-1][3] == length
    keys = [(order[kind], name if kind != "separator" else "") for name, kind, _, _ in ep.segments]
    assert keys == sorted(keys)
    for name, kind, start, stop in ep.segments:
        block, m = rows[:, start:stop], loss[:, start:stop]
        if kind == "text":
            assert (((block >= 0) & (block < lay.text_size)) | (block == lay.pad_id)).all()
            np.testing.assert_array_equal(m, block != lay.pad_id)
            for i in range(t):
                assert tok.decode_text(block[i][block[i] != lay.pad_id]) == obs[name][i]
        elif kind == "image":
            assert (block == lay.patch_id).all() and not m.any()
        elif kind == "continuous":
            assert ((block >= lay.continuous_offset) & (block < lay.discrete_offset)).all() and not m.any()
        elif kind == "discrete":
            np.testing.assert_array_equal(block - lay.discrete_offset, obs[name].reshape(t, -1))
            assert not m.any()
        elif kind == "separator":
            assert (block == lay.separator_id).all() and not m.any()
        else:
            assert m.all()
            back = tok.decode_actions(spec, block)
            if spec.action.kind == "discrete":
                np.testing.assert_array_equal(back, actions)
            else:
                x = np.clip(actions.astype(np.float64), -256, 256)
                f = np.sign(x) * np.log1p(np.abs(x) * 100) / np.log1p(25600)
                g = np.sign(back) * np.log1p(np.abs(back.astype(np.float64)) * 100) / np.log1p(25600)
                assert (np.abs(f - g) <= 1 / 1024 + 1e-6).all()
    assert ep.patches.shape[0] == np.count_nonzero(ep.tokens == lay.patch_id) == ep.patch_pos.shape[0]
    assert set(ep.clipped) == {f.name for f in spec.observation if f.kind == "continuous"} | (
        {"action"} if with_actions and spec.action.kind == "continuous" else set())


@settings(max_examples=40, deadline=None)
@given(episodes(), st.sampled_from([np.nan, np.inf, -np.inf]), st.integers(0, 10**6))
def test_non_finite_anywhere_raises_naming_the_field(tok: Tokenizer, case, bad: float, where: int) -> None:
    spec, obs, actions = case
    targets = [f.name for f in spec.observation if f.kind == "continuous" and f.dtype != "int32"]
    if not targets:
        return
    name = targets[where % len(targets)]
    x = obs[name].copy()
    x.reshape(-1)[where % x.size] = bad
    with pytest.raises(ValueError, match=rf"Field '{name}': continuous values must be finite"):
        tok.tokenize_episode(spec, dict(obs, **{name: x}), actions)
