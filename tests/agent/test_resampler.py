"""The resampler image encoder and the image options of the one model: config, tokenizer layout, cache and
loader batches, the KV-cached session against a full recomputation (every option), checkpoints, training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from omnipolicy.agent import GatoModel, ModelConfig
from omnipolicy.agent.checkpoint import CheckpointMeta, load_meta, load_model_weights, save_checkpoint
from omnipolicy.agent.inference import InferenceSession, ObsTokens, SessionConfig
from omnipolicy.agent.resampler import image_of_patch
from omnipolicy.agent.train import TrainConfig, slice_batch, to_tensors, train
from omnipolicy.datasets import Episode, EpisodeStore, TokenCache, WindowLoader
from omnipolicy.tokenizers import FieldSpec, TimestepSpec, Tokenizer, normalize_patches

TOK = Tokenizer.default()
LAYOUT = TOK.layout
CONT, DISC = LAYOUT.continuous_offset, LAYOUT.discrete_offset
RANGES = np.array([[CONT, CONT + 1024], [DISC, DISC + 5]])
OPTIONS = [("patches", "early"), ("resampler", "early"), ("resampler", "cross-attention")]
# pixels encode the timestep; a discrete "t" says which timestep a token belongs to
PIX_SPEC = TimestepSpec(
    (FieldSpec("image", "image", (32, 48, 3), "uint8"), FieldSpec("t", "discrete", (), "int64", n=1024)),
    FieldSpec("action", "discrete", (), "int64", n=4),
)
ATARI_SPEC = TimestepSpec((FieldSpec("frame", "image", (84, 84, 1), "uint8"),), FieldSpec("action", "discrete", (), "int64", n=18))

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/agent/conftest.py


def vision_model(encoder: str, fusion: str, seed: int = 0, open_gates: bool = True, **overrides) -> GatoModel:
    """A tiny model with the image option; cross-attention's gates opened so that the images matter."""
    base = dict(n_layer=2, n_embd=32, n_head=4, d_ff=64, context=96, local_positions=48, patch_channels=8, patch_stride=4,
                image_encoder=encoder, fusion=fusion, resampler_latents=3, resampler_depth=2)
    torch.manual_seed(seed)
    model = GatoModel(ModelConfig(**{**base, **overrides}).with_layout(LAYOUT)).eval()
    if open_gates:
        with torch.no_grad():
            for block in model.xattn:
                block.gate_attn.fill_(0.8)
                block.gate_ff.fill_(-0.6)
    return model


def image_patches(rng: np.random.Generator, grids: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Random patches of images with the given (rows, cols) patch grids, one after another, and their positions."""
    pos = np.concatenate([np.stack(np.divmod(np.arange(r * c), c), 1) for r, c in grids]).astype(np.int64)
    return rng.uniform(-0.25, 0.25, (len(pos), 3, 16, 16)).astype(np.float32), pos


def make_obs(rng: np.random.Generator, cfg: ModelConfig, grids=((2, 3), (1, 2)), n_values: int = 3) -> ObsTokens:
    """An observation of two images of different sizes and a few continuous values, laid out for ``cfg``."""
    patches, pos = image_patches(rng, grids)
    slots = len(pos) if cfg.slots_per_image is None else cfg.slots_per_image * len(grids)
    tok = np.concatenate([np.full(slots, LAYOUT.patch_id), rng.integers(CONT, CONT + 1024, n_values),
                          [LAYOUT.separator_id]]).astype(np.int64)
    return ObsTokens(tok, patches, pos)


@torch.no_grad()
def reference_logits(model: GatoModel, window: list[tuple[ObsTokens, np.ndarray]]) -> torch.Tensor:
    """Logits (A, V) of the newest timestep's action tokens by one full forward over ``window``."""
    A = len(window[-1][1])
    steps = [np.concatenate([o.tokens, a]) for o, a in window]
    tokens = np.concatenate(steps)
    local = np.concatenate([np.arange(len(s)) for s in steps])
    is_slot = tokens == LAYOUT.patch_id
    pidx = np.where(is_slot, np.cumsum(is_slot) - 1, -1)
    dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
    patches = torch.from_numpy(np.concatenate([o.patches for o, _ in window])).to(dev, dt)
    ppos = torch.from_numpy(np.concatenate([o.patch_pos for o, _ in window])).to(dev)
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64)).to(dev)[None]  # noqa: E731
    ctx = None
    if model.cfg.cross_attn_layers:  # each timestep's images are one frame
        frame_index = np.repeat(np.arange(len(steps)), [len(s) for s in steps])
        image_frame = np.repeat(np.arange(len(steps)), [int(((o.patch_pos == 0).all(1)).sum()) for o, _ in window])
        ctx = model.image_context(patches, ppos, t(image_frame)[0], t(frame_index))
    h = model(t(tokens), t(local), t(pidx), patches, ppos, context=ctx)
    n = len(tokens)
    return model.logits(h[0, n - A - 1 : n - 1]).float().cpu()


# ------------------------------------------------------------------------------------------------ config


def test_bad_image_options_are_refused_with_the_valid_choices():
    base = dict(n_layer=1, n_embd=32, n_head=4, d_ff=64)
    with pytest.raises(ValueError, match=r"image_encoder must be one of \('patches', 'resampler', 'vq'\), got 'pixels'"):
        ModelConfig(**base, image_encoder="pixels")
    with pytest.raises(ValueError, match=r"fusion must be one of \('early', 'cross-attention'\), got 'late'"):
        ModelConfig(**base, fusion="late")
    with pytest.raises(ValueError, match=r"resampler_latents must be a positive int, got 0"):
        ModelConfig(**base, image_encoder="resampler", resampler_latents=0)
    with pytest.raises(ValueError, match=r"fusion='cross-attention' .* needs image_encoder='resampler', got image_encoder='patches'"):
        ModelConfig(**base, fusion="cross-attention")
    with pytest.raises(ValueError, match=r"TrainConfig: .*needs image_encoder='resampler'"):
        TrainConfig(fusion="cross-attention")
    with pytest.raises(ValueError, match=r"needs image_encoder='resampler', got image_encoder='vq' \(vq images are codes"):
        ModelConfig(**base, image_encoder="vq", fusion="cross-attention")
    vq = GatoModel(ModelConfig(**base, image_encoder="vq", vocab_size=100))  # images as codes: no image modules
    assert vq.resampler is None and not hasattr(vq, "patch_embed") and len(vq.xattn) == 0


@pytest.mark.parametrize("encoder,fusion", OPTIONS + [("resampler", "cross-attention-every-2"), ("vq", "early")])
def test_num_params_is_exact(encoder, fusion):
    every = 2 if fusion.endswith("every-2") else 1
    model = vision_model(encoder, fusion.removesuffix("-every-2"), n_layer=3, cross_attn_every=every, bias=every == 1)
    assert model.cfg.num_params() == model.num_params() == sum(p.numel() for p in model.parameters())
    assert len(model.xattn) == len(model.cfg.cross_attn_layers) == ((2 if every == 2 else 3) if "cross" in fusion else 0)


# --------------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("slots,per_frame", [(None, 36), (4, 4), (8, 8), (0, 0)])
def test_an_atari_frame_takes_n_slots_instead_of_36(slots, per_frame):
    frames = np.random.default_rng(0).integers(0, 256, (5, 84, 84, 1), dtype=np.uint8)
    ep = TOK.tokenize_episode(ATARI_SPEC, {"frame": frames}, np.arange(5) % 18, image_slots=slots)
    assert ep.tokens_per_timestep == per_frame + 2  # the slots, the separator and the action
    assert int((ep.per_timestep() == LAYOUT.patch_id).sum(1).max()) == per_frame
    assert ep.patches.shape == (5 * 36, 3, 16, 16)  # the images stay whole for the encoder
    plain = TOK.tokenize_episode(ATARI_SPEC, {"frame": frames}, np.arange(5) % 18)
    np.testing.assert_array_equal(ep.patches, plain.patches)
    np.testing.assert_array_equal(ep.action_tokens(), plain.action_tokens())
    with pytest.raises(ValueError, match=r"image_slots must be None \(one slot per patch\) or an int >= 0, got -1"):
        TOK.tokenize_episode(ATARI_SPEC, {"frame": frames}, None, image_slots=-1)


# ------------------------------------------------------------------------------------------------- model


def test_each_image_is_resampled_on_its_own_whatever_else_is_in_the_batch():
    model = vision_model("resampler", "early")
    rng = np.random.default_rng(0)
    patches, pos = image_patches(rng, ((2, 3), (1, 1), (3, 2)))
    image, place = image_of_patch(torch.from_numpy(pos))
    assert image.tolist() == [0] * 6 + [1] + [2] * 6 and place.tolist() == [*range(6), 0, *range(6)]
    with torch.no_grad():
        together = model.encode_images(torch.from_numpy(patches), torch.from_numpy(pos))  # (3, N, D)
        alone = model.encode_images(torch.from_numpy(patches[7:]), torch.from_numpy(pos[7:]))
    assert together.shape == (3, 3, 32)
    torch.testing.assert_close(together[2:], alone, atol=1e-5, rtol=1e-5)  # padding is masked out


# ----------------------------------------------------------------------------------------------- session


@pytest.mark.parametrize("encoder,fusion", OPTIONS)
@pytest.mark.parametrize("static", [False, True])
def test_session_with_cached_latents_equals_full_recomputation(encoder, fusion, static):
    model = vision_model(encoder, fusion, context=96 if fusion == "early" else 40)  # cross-attention: 6-token timesteps
    session = InferenceSession(model, SessionConfig(num_envs=2), patch_id=LAYOUT.patch_id)
    session._static = static  # the CUDA-graph bodies, eagerly
    rng = np.random.default_rng(1)
    histories = {0: [], 1: []}
    prompt = [(make_obs(rng, model.cfg), np.array([CONT + 7, DISC + 1])) for _ in range(2)]
    session.append([[ObsTokens(np.concatenate([o.tokens, a]), o.patches, o.patch_pos) for o, a in prompt]], env_ids=[0])
    histories[0] += prompt
    rebuilds = 0
    for t in range(14):
        ids = [0, 1] if t % 3 else [0]  # env 1 skips steps: rows with different fills share a batch
        obs = [make_obs(rng, model.cfg) for _ in ids]
        out = session.step(obs, RANGES, env_ids=ids, return_logits=True)
        rebuilds += len(out.rebuilt)
        for row, (o, e, a) in enumerate(zip(obs, ids, out.action_tokens)):
            histories[e].append((o, a))
            ref = reference_logits(model, histories[e][-session.window_timesteps(e):])
            for k, (lo, hi) in enumerate(RANGES):
                np.testing.assert_allclose(out.logits[row, k, lo:hi].numpy(), ref[k, lo:hi].numpy(), atol=1e-4, rtol=1e-3)
    assert rebuilds >= 2  # the window was shortened and the cache rebuilt (cross-attention frames included)
    session.rollback(1, env_ids=[0])
    histories[0].pop()
    o = make_obs(rng, model.cfg)
    out = session.step([o], RANGES, env_ids=[0], return_logits=True)
    histories[0].append((o, out.action_tokens[0]))
    ref = reference_logits(model, histories[0][-session.window_timesteps(0):])
    np.testing.assert_allclose(out.logits[0, 0, CONT:CONT + 1024].numpy(), ref[0, CONT:CONT + 1024].numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("encoder,fusion", OPTIONS)
def test_cuda_graph_session_with_images_equals_full_recomputation(encoder, fusion):
    model = vision_model(encoder, fusion, context=96 if fusion == "early" else 40).cuda()
    session = InferenceSession(model, SessionConfig(num_envs=2, dtype="float32"), patch_id=LAYOUT.patch_id)
    assert session.use_graphs
    rng = np.random.default_rng(2)
    histories = {0: [], 1: []}
    for t in range(14):
        obs = [make_obs(rng, model.cfg) for _ in range(2)]
        out = session.step(obs, RANGES, return_logits=True)
        for row, (o, a) in enumerate(zip(obs, out.action_tokens)):
            histories[row].append((o, a))
            ref = reference_logits(model, histories[row][-session.window_timesteps(row):])
            for k, (lo, hi) in enumerate(RANGES):
                np.testing.assert_allclose(out.logits[row, k, lo:hi].numpy(), ref[k, lo:hi].numpy(), atol=2e-3, rtol=1e-3)
    assert session.stats["rebuilds"] > 0 and [key[0] for key in session._graphs].count("prefill") == 1


def test_session_refuses_slots_that_do_not_match_the_images():
    model = vision_model("resampler", "early")
    session = InferenceSession(model, SessionConfig(num_envs=1), patch_id=LAYOUT.patch_id)
    o = make_obs(np.random.default_rng(0), model.cfg)
    bad = ObsTokens(o.tokens[1:], o.patches, o.patch_pos)
    with pytest.raises(ValueError, match=r"5 image slots but 2 image\(s\) of 3 slots each"):
        session.step([bad], RANGES)


# ------------------------------------------------------------------------------------------ cache, loader


def pixel_store(root, episodes=((0, 7), (1, 5))) -> None:
    """Episodes whose image at timestep t is the constant t * 9 + e, with t also a discrete observation."""
    store = EpisodeStore(root)
    eps = []
    for e, T in episodes:
        img = (np.arange(T)[:, None, None, None] * 9 + e + np.zeros((1, 32, 48, 3))).astype(np.uint8)
        eps.append(Episode("toy/pixels-v0", {"image": img, "t": np.arange(T)}, np.arange(T) % 4, np.zeros(T), seed=e,
                           spec=PIX_SPEC))
    store.append_episodes(eps)
    store.close()


def token_timesteps(batch: dict) -> np.ndarray:
    """(B, S) the timestep each token belongs to, read from its timestep's "t" token (-1 on padding)."""
    is_t = (batch["tokens"] >= DISC) & (batch["tokens"] < DISC + 1024) & ~batch["loss_mask"]
    is_t &= np.roll(batch["tokens"] == LAYOUT.separator_id, -1, axis=1)  # the token before the separator
    out = np.full(batch["tokens"].shape, -1)
    for b in range(len(out)):
        starts = np.flatnonzero(batch["local_pos"][b] == 0)
        for s, e in zip(starts, [*starts[1:], len(out[b])]):
            t = np.flatnonzero(is_t[b, s:e])
            if len(t):
                out[b, s:e] = batch["tokens"][b, s + t[0]] - DISC
    return out


def test_resampler_cache_and_windows_hold_whole_images_behind_their_slots(tmp_path):
    pixel_store(tmp_path / "data")
    cache = TokenCache.build(tmp_path / "data", TOK, tmp_path / "cache", progress=False, image_slots=3)
    assert cache.image_slots == 3 and cache.episode(0).tokens_per_timestep == 3 + 1 + 1 + 1
    assert TokenCache.build(tmp_path / "data", TOK, tmp_path / "plain", progress=False).image_slots is None
    batch = WindowLoader(cache, context=20, batch_size=6, seed=0).sample()
    ts = token_timesteps(batch)
    slot = batch["patch_index"]
    starts = np.append(np.flatnonzero((batch["patch_pos"] == 0).all(1)), len(batch["patch_pos"]))
    assert (slot >= 0).sum() > 20
    for b, s in zip(*np.nonzero(slot >= 0)):
        image, latent = divmod(int(slot[b, s]), 3)
        assert latent == batch["local_pos"][b, s]  # the slots of an image, in order, lead the timestep
        if ts[b, s] < 0:  # a timestep cut by the window's end: its "t" token is not in the window
            continue
        value = ts[b, s] * 9 + batch["episode"][b]
        want = normalize_patches(np.full((6, 16, 16, 3), value, np.uint8))
        np.testing.assert_array_equal(batch["patches"][starts[image]:starts[image + 1]], want)
    part = slice_batch(batch, 2, 4, slots_per_image=3)  # a micro-batch keeps whole images, renumbered
    model = vision_model("resampler", "early")
    with torch.no_grad():
        full = model.embed(*(to_tensors(batch, torch.device("cpu"))[k] for k in ("tokens", "local_pos", "patch_index", "patches", "patch_pos")))
        sub = model.embed(*(to_tensors(part, torch.device("cpu"))[k] for k in ("tokens", "local_pos", "patch_index", "patches", "patch_pos")))
    torch.testing.assert_close(sub, full[2:4], atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------- checkpoints and training


@pytest.mark.parametrize("encoder,fusion", OPTIONS[1:])
def test_checkpoint_reload_is_identical_and_old_checkpoints_load_with_patches(tmp_path, encoder, fusion):
    model = vision_model(encoder, fusion)
    path = save_checkpoint(tmp_path / "step_0000001", model, CheckpointMeta(model.cfg, LAYOUT, {"toy/pixels-v0": PIX_SPEC}))
    again, meta = load_model_weights(path)
    assert (meta.model.image_encoder, meta.model.fusion, meta.model.resampler_latents) == (encoder, fusion, 3)
    rng = np.random.default_rng(0)
    window = [(make_obs(rng, model.cfg), np.array([CONT + 3, DISC + 2])) for _ in range(3)]
    assert torch.equal(reference_logits(model, window), reference_logits(again, window))
    d = json.loads((path / "checkpoint.json").read_text())
    for key in ("image_encoder", "resampler_latents", "resampler_depth", "fusion", "cross_attn_every"):
        del d["model"][key]  # a checkpoint written before these options existed
    (path / "checkpoint.json").write_text(json.dumps(d))
    old = load_meta(path).model
    assert (old.image_encoder, old.fusion, old.slots_per_image) == ("patches", "early", None)


@pytest.mark.parametrize("encoder,fusion", OPTIONS)
def test_a_tiny_training_run_lowers_the_loss(tmp_path, encoder, fusion):
    pixel_store(tmp_path / "data", episodes=((0, 12), (1, 12), (2, 12)))
    cfg = TrainConfig(data=(tmp_path / "data",), out=tmp_path / "run", steps=30, batch_size=4, lr=3e-3, warmup_steps=3,
                      context=48, image_encoder=encoder, resampler_latents=4, fusion=fusion, save_every=1000,
                      progress=False, tensorboard=False, grad_accum=2)
    result = train(cfg)
    assert np.mean(result.losses[-5:]) < 0.7 * np.mean(result.losses[:3])
    _, meta = load_model_weights(result.checkpoint)
    assert (meta.model.image_encoder, meta.model.fusion, meta.model.resampler_latents) == (encoder, fusion, 4)
    assert dataclasses.asdict(meta.model) == dataclasses.asdict(cfg.model_config(LAYOUT))


@pytest.mark.parametrize("fusion", ["early", "cross-attention"])
def test_the_recomputing_policy_acts_like_the_session_with_a_prompt_and_without(fusion):
    from omnipolicy.agent import Policy

    model = vision_model("resampler", fusion, context=60)
    meta = CheckpointMeta(model.cfg, LAYOUT, {"toy/pixels-v0": PIX_SPEC})
    recompute, cached = Policy(model, meta, TOK), Policy(model, meta, TOK, use_session=True)
    rng = np.random.default_rng(0)

    def obs(t):
        return {"image": rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), "t": np.int64(t)}

    for p in (recompute, cached):
        p.reset(2)
    for t in range(12):  # past the window: both drop whole oldest timesteps
        o = [obs(t), obs(t + 1)]
        np.testing.assert_array_equal(np.stack(recompute.act("toy/pixels-v0", o)), np.stack(cached.act("toy/pixels-v0", o)))
    # a prompt: the recomputing policy keeps it in its window; a session is given it with append()
    demo = [obs(t) for t in range(3)]
    demo_obs = {"image": np.stack([d["image"] for d in demo]), "t": np.arange(3)}
    assert recompute.set_prompt("toy/pixels-v0", demo_obs, np.array([1, 2, 3])) == 3
    recompute.reset(1)
    session = InferenceSession(model, SessionConfig(num_envs=1), patch_id=LAYOUT.patch_id)
    ep = TOK.tokenize_episode(PIX_SPEC, demo_obs, np.array([1, 2, 3]), image_slots=model.cfg.slots_per_image)
    L, p = ep.tokens_per_timestep, len(ep.patches) // 3
    session.append([[ObsTokens(ep.tokens[t * L:(t + 1) * L], ep.patches[t * p:(t + 1) * p], ep.patch_pos[t * p:(t + 1) * p])
                     for t in range(3)]])
    for t in range(3):
        o = obs(t)
        one = TOK.tokenize_episode(PIX_SPEC, {"image": o["image"][None], "t": np.array([t])}, None,
                                   image_slots=model.cfg.slots_per_image)
        got = session.step([ObsTokens(one.tokens, one.patches, one.patch_pos)], TOK.action_token_ranges(PIX_SPEC))
        assert int(recompute.act("toy/pixels-v0", [o])[0]) == int(got.action_tokens[0, 0]) - DISC


def test_train_flags_override_the_preset_and_a_mislaid_batch_is_refused(tmp_path, capsys):
    from omnipolicy.agent.train import check_batch, train_command

    pixel_store(tmp_path / "data")
    train_command(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2",
                   "--context", "32", "--image-encoder", "resampler", "--resampler-latents", "4", "--fusion",
                   "cross-attention", "--cross-attn-every", "2", "--no-progress", "--no-tensorboard", "--threads", "1"],
                  prog="omnipolicy train")
    assert "trained 2 steps" in capsys.readouterr().out
    m = load_meta(tmp_path / "run").model
    assert (m.image_encoder, m.resampler_latents, m.fusion, m.cross_attn_every) == ("resampler", 4, "cross-attention", 2)
    plain = TokenCache.build(tmp_path / "data", TOK, tmp_path / "plain", progress=False)  # one slot per patch
    batch = WindowLoader(plain, context=20, batch_size=2).sample()
    with pytest.raises(ValueError, match=r"not laid out for the model's slots_per_image=3 .* image_slots=3"):
        check_batch(batch, vision_model("resampler", "early").cfg)
