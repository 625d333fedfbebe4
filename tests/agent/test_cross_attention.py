"""Gated cross-attention fusion (Flamingo): the identity at initialisation, gradients through the gates, tokens
without an image, and the loader's frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnipolicy.agent import GatoModel, ModelConfig
from omnipolicy.agent.cross_attention import ImageContext
from omnipolicy.agent.train import slice_batch, to_tensors
from omnipolicy.datasets import Episode, EpisodeStore, TokenCache, WindowLoader
from omnipolicy.tokenizers import FieldSpec, TimestepSpec, Tokenizer, normalize_patches

TOK = Tokenizer.default()
LAYOUT = TOK.layout
DISC = LAYOUT.discrete_offset
PIX_SPEC = TimestepSpec(
    (FieldSpec("image", "image", (32, 48, 3), "uint8"), FieldSpec("t", "discrete", (), "int64", n=1024)),
    FieldSpec("action", "discrete", (), "int64", n=4),
)
NO_IMAGE_SPEC = TimestepSpec((FieldSpec("t", "discrete", (), "int64", n=1024),), FieldSpec("action", "discrete", (), "int64", n=4))

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/agent/conftest.py


def models(seed: int = 0) -> tuple[GatoModel, GatoModel]:
    """A cross-attention model as initialised and the model without cross-attention on the same weights."""
    base = dict(n_layer=3, n_embd=32, n_head=4, d_ff=64, context=64, local_positions=32, patch_channels=8, patch_stride=4)
    torch.manual_seed(seed)
    cross = GatoModel(ModelConfig(**base, image_encoder="resampler", resampler_latents=4, fusion="cross-attention",
                                  cross_attn_every=2).with_layout(LAYOUT))
    plain = GatoModel(ModelConfig(**base).with_layout(LAYOUT))
    missing, unexpected = plain.load_state_dict(cross.state_dict(), strict=False)
    assert not missing and all(k.startswith(("resampler.", "xattn.")) for k in unexpected)
    return cross, plain


def pixel_batch(tmp_path, with_plain_task: bool = True) -> dict[str, np.ndarray]:
    """A loader batch of a cross-attention cache: images whose pixels are t * 9 + episode, and a task without images."""
    eps, plain = [], []
    for e, T in ((0, 9), (1, 7)):
        img = (np.arange(T)[:, None, None, None] * 9 + e + np.zeros((1, 32, 48, 3))).astype(np.uint8)
        eps.append(Episode("toy/pixels-v0", {"image": img, "t": np.arange(T)}, np.arange(T) % 4, np.zeros(T), seed=e, spec=PIX_SPEC))
    if with_plain_task:
        plain.append(Episode("toy/plain-v0", {"t": np.arange(20)}, np.arange(20) % 4, np.zeros(20), seed=5, spec=NO_IMAGE_SPEC))
    for name, episodes in (("pixels", eps), ("plain", plain)):
        if episodes:
            store = EpisodeStore(tmp_path / "data" / name)
            store.append_episodes(episodes)
            store.close()
    cache = TokenCache.build(tmp_path / "data", TOK, tmp_path / "cache", progress=False, image_slots=0)
    assert cache.episode(0).tokens_per_timestep == 3  # t, separator, action: the image left the sequence
    return WindowLoader(cache, context=12, batch_size=8, seed=1).sample()


def test_at_initialisation_the_outputs_equal_the_model_without_cross_attention(tmp_path):
    cross, plain = models()
    batch = to_tensors(pixel_batch(tmp_path), torch.device("cpu"))
    assert (batch["frame_index"] >= 0).any() and (batch["frame_index"] < 0).any()
    args = (batch["tokens"], batch["local_pos"], batch["patch_index"], None, None)
    with torch.no_grad():
        ctx = cross.batch_context(batch)
        assert torch.equal(cross(*args, context=ctx), plain(*args))  # gates at 0: exactly the same model
        assert torch.equal(cross.loss_terms(batch)[0], plain.loss_terms(batch)[0])
        for block in cross.xattn:
            block.gate_attn.fill_(0.5)
        assert not torch.allclose(cross(*args, context=ctx), plain(*args), atol=1e-4)  # open gates: the images count


def test_the_gates_get_gradient_first_and_the_rest_once_they_are_open(tmp_path):
    cross, _ = models()
    batch = to_tensors(pixel_batch(tmp_path), torch.device("cpu"))
    cross.loss_terms(batch)[0].backward()
    for block in cross.xattn:
        assert block.gate_attn.grad.abs() > 0 and block.gate_ff.grad.abs() > 0
        for name in ("to_q", "to_kv", "to_out"):
            assert torch.count_nonzero(getattr(block, name).weight.grad) == 0  # behind a closed gate
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in cross.resampler.parameters())
    cross.zero_grad()
    with torch.no_grad():
        for block in cross.xattn:
            block.gate_attn.fill_(0.3)
            block.gate_ff.fill_(0.3)
    cross.loss_terms(batch)[0].backward()
    for block in cross.xattn:
        for name in ("to_q", "to_kv", "to_out"):
            assert getattr(block, name).weight.grad.abs().sum() > 0
    assert cross.resampler.latents.grad.abs().sum() > 0 and cross.patch_embed.stem.weight.grad.abs().sum() > 0


def test_tokens_without_an_image_attend_to_nothing():
    cross, _ = models()
    block = cross.xattn[0]
    x = torch.randn(2, 5, 32)
    latents = torch.randn(3, 8, 32)
    valid = torch.ones(3, 8, dtype=torch.bool)
    valid[2, 4:] = False  # a frame of one image where the others have two
    index = torch.tensor([[-1, -1, 0, 0, 1], [2, 2, -1, 1, 1]])
    with torch.no_grad():
        y = block.attend(x, ImageContext(latents, valid, index))
        assert torch.equal(y[index < 0], torch.zeros(3, 32))
        empty = valid.clone()
        empty[0] = False  # the frame a token without one is pointed at may be an unused, empty slot
        assert torch.equal(block.attend(x, ImageContext(latents, empty, index))[index < 0], torch.zeros(3, 32))
        assert (y[index >= 0].abs().sum(-1) > 0).all()
        # a padded latent changes nothing: frame 2 equals its first four latents alone
        alone = block.attend(x[1:, :2], ImageContext(latents[2:, :4], torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 2, dtype=torch.long)))
    torch.testing.assert_close(y[1:, :2], alone, atol=1e-6, rtol=1e-5)


def test_each_token_attends_to_its_own_timesteps_images(tmp_path):
    batch = pixel_batch(tmp_path)
    assert "frame_index" in batch and (batch["patch_index"] < 0).all()  # no image slots
    starts = np.append(np.flatnonzero((batch["patch_pos"] == 0).all(1)), len(batch["patch_pos"]))
    assert np.all(np.diff(batch["image_frame"]) >= 0) and len(batch["image_frame"]) == len(starts) - 1
    plain_rows = image_rows = 0
    for b in range(len(batch["tokens"])):
        first = np.flatnonzero(batch["local_pos"][b] == 0)
        for s, e in zip(first, [*first[1:], batch["tokens"].shape[1]]):
            frames = np.unique(batch["frame_index"][b, s:e])
            assert len(frames) == 1  # one frame per timestep
            if frames[0] < 0:  # the task without images
                plain_rows += 1
                continue
            t = batch["tokens"][b, s] - DISC  # the timestep's "t" observation leads it
            value = t * 9 + batch["episode"][b]
            (image,) = np.flatnonzero(batch["image_frame"] == frames[0])
            want = normalize_patches(np.full((6, 16, 16, 3), value, np.uint8))
            np.testing.assert_array_equal(batch["patches"][starts[image]:starts[image + 1]], want)
            image_rows += 1
    assert plain_rows > 0 and image_rows > 10
    # a micro-batch keeps its rows' frames: each token attends to the same latents
    cross, _ = models()
    part = slice_batch(batch, 3, 6, slots_per_image=0)
    with torch.no_grad():
        full = cross.batch_context(to_tensors(batch, torch.device("cpu")))
        sub = cross.batch_context(to_tensors(part, torch.device("cpu")))
    has = full.index[3:6] >= 0
    assert torch.equal(has, sub.index >= 0)
    torch.testing.assert_close(sub.latents[sub.index[has]], full.latents[full.index[3:6][has]], atol=1e-6, rtol=1e-6)


def test_a_session_on_a_task_without_images_equals_the_model_without_context():
    from omnipolicy.agent.inference import InferenceSession, ObsTokens, SessionConfig

    cross, _ = models()
    cross.eval()
    with torch.no_grad():
        for block in cross.xattn:  # open gates: the feed-forward half acts on every token, image or not
            block.gate_attn.fill_(0.5)
            block.gate_ff.fill_(0.5)
    session = InferenceSession(cross, SessionConfig(num_envs=1), patch_id=LAYOUT.patch_id)
    rng = np.random.default_rng(0)
    ranges = np.array([[DISC, DISC + 4]])
    seq = []
    for _ in range(6):
        obs = np.array([DISC + rng.integers(0, 1024), LAYOUT.separator_id])
        out = session.step([ObsTokens(obs)], ranges, return_logits=True)
        seq.append(np.concatenate([obs, out.action_tokens[0]]))
        tokens = torch.from_numpy(np.concatenate(seq))[None]
        local = torch.arange(3).repeat(len(seq))[None]
        with torch.no_grad():
            h = cross(tokens, local, torch.full_like(tokens, -1), None, None)  # no context: no token has an image
            ref = cross.logits(h[0, -2])[DISC:DISC + 4]
        assert torch.isfinite(out.logits[0, 0, DISC:DISC + 4]).all()
        torch.testing.assert_close(out.logits[0, 0, DISC:DISC + 4], ref, atol=1e-4, rtol=1e-4)
