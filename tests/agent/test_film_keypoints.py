"""FiLM of the image patches by the instruction (``ModelConfig.film``) and spatial-softmax keypoints of each image
(``ModelConfig.keypoints``): config, what each depends on, the zero start, the KV-cached session against a full
recomputation, and the train flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnipolicy.agent import GatoModel, ModelConfig
from omnipolicy.agent.inference import InferenceSession, ObsTokens, SessionConfig
from omnipolicy.agent.train import TrainConfig
from omnipolicy.tokenizers import Tokenizer

TOK = Tokenizer.default()
LAYOUT = TOK.layout
CONT, DISC = LAYOUT.continuous_offset, LAYOUT.discrete_offset
RANGES = np.array([[CONT, CONT + 1024], [DISC, DISC + 5]])
BASE = dict(n_layer=2, n_embd=32, n_head=4, d_ff=64, context=96, local_positions=48, patch_channels=8, patch_stride=4)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/agent/conftest.py


def model(film: bool, seed: int = 0, randomise: bool = True, keypoints: int = 0, keypoint_film: bool = False) -> GatoModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(**BASE, film=film, keypoints=keypoints, keypoint_film=keypoint_film)
    m = GatoModel(cfg.with_layout(LAYOUT)).eval()
    if randomise:  # trained FiLM and keypoint maps: their zero start changes nothing (tested below)
        with torch.no_grad():
            layers = [m.film.proj if film else None, m.keypoints.proj if keypoints else None,
                      m.keypoints.maps if keypoints else None, m.keypoints.film if keypoint_film else None]
            for layer in filter(None, layers):
                layer.weight.normal_(0.0, 0.5)
                layer.bias.normal_(0.0, 0.1)
    return m


def obs(rng: np.random.Generator, words: str, patches: int = 4) -> ObsTokens:
    """A timestep: the instruction's text tokens, ``patches`` image patches, two continuous values, the separator."""
    text = TOK.encode_text(words)
    tok = np.concatenate([text, np.full(patches, LAYOUT.patch_id), rng.integers(CONT, CONT + 1024, 2),
                          [LAYOUT.separator_id]]).astype(np.int64)
    pos = np.stack(np.divmod(np.arange(patches), 2), 1).astype(np.int64)
    return ObsTokens(tok, rng.uniform(-0.25, 0.25, (patches, 3, 16, 16)).astype(np.float32), pos)


def window_inputs(window: list[tuple[ObsTokens, np.ndarray]]):
    steps = [np.concatenate([o.tokens, a]) for o, a in window]
    tokens = np.concatenate(steps)
    local = np.concatenate([np.arange(len(s)) for s in steps])
    is_slot = tokens == LAYOUT.patch_id
    pidx = np.where(is_slot, np.cumsum(is_slot) - 1, -1)
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))[None]  # noqa: E731
    patches = torch.from_numpy(np.concatenate([o.patches for o, _ in window]))
    ppos = torch.from_numpy(np.concatenate([o.patch_pos for o, _ in window]))
    return t(tokens), t(local), t(pidx), patches, ppos


def test_film_options_are_checked_and_counted():
    with pytest.raises(ValueError, match=r"film conditions the patch embeddings .* got 'resampler' and 'early'"):
        ModelConfig(**BASE, film=True, image_encoder="resampler")
    with pytest.raises(ValueError, match=r"film must be a bool, got 1"):
        ModelConfig(**BASE, film=1)
    with pytest.raises(ValueError, match=r"film and keypoint_film need the layout.s text ids"):
        GatoModel(ModelConfig(**BASE, film=True, vocab_size=LAYOUT.vocab_size))
    m = model(True)
    assert m.cfg.num_params() == m.num_params() == model(False).num_params() + 32 * 64 + 64
    cfg = TrainConfig(film=True).model_config(LAYOUT)
    assert cfg.film and cfg.n_layer == TrainConfig().model_config(LAYOUT).n_layer
    assert not TrainConfig().model_config(LAYOUT).film


@torch.no_grad()
def test_an_untrained_film_changes_nothing():
    rng = np.random.default_rng(0)
    window = [(obs(rng, "pick up the red cube"), np.array([CONT + 3, DISC + 1])) for _ in range(2)]
    args = window_inputs(window)
    plain, film = model(False), model(True, randomise=False)
    torch.testing.assert_close(film(*args), plain(*args), atol=0.0, rtol=0.0)


@torch.no_grad()
def test_each_patch_is_conditioned_on_its_own_timesteps_instruction_only():
    rng = np.random.default_rng(1)
    a1, a2 = np.array([CONT + 3, DISC + 1]), np.array([CONT + 9, DISC + 2])
    first, second = obs(rng, "pick up the red cube"), obs(rng, "lift the blue can")
    other_first = ObsTokens(np.concatenate([TOK.encode_text("lift the blue can"), first.tokens[len(TOK.encode_text(
        "pick up the red cube")):]]), first.patches, first.patch_pos)
    m, plain = model(True), model(False)
    x = m.embed(*window_inputs([(first, a1), (second, a2)]))
    y = m.embed(*window_inputs([(other_first, a1), (second, a2)]))
    n1, n1b = len(first.tokens) + 2, len(other_first.tokens) + 2
    slots1 = np.flatnonzero(first.tokens == LAYOUT.patch_id)
    slots1b = np.flatnonzero(other_first.tokens == LAYOUT.patch_id)
    # the first timestep's patches move with its instruction ...
    assert (x[0, slots1] - y[0, slots1b]).abs().amax() > 1e-2
    # ... the second timestep's do not (its own instruction is the same), nor does anything that is not a patch
    torch.testing.assert_close(x[0, n1:], y[0, n1b:], atol=1e-6, rtol=0.0)
    px, py = plain.embed(*window_inputs([(first, a1), (second, a2)])), plain.embed(*window_inputs([(other_first, a1), (second, a2)]))
    torch.testing.assert_close(px[0, slots1], py[0, slots1b], atol=1e-6, rtol=0.0)  # without FiLM: text-blind patches
    values = slice(slots1[-1] + 1, n1)
    torch.testing.assert_close(x[0, values], px[0, values], atol=1e-6, rtol=0.0)


@pytest.mark.parametrize("film, keypoints, keypoint_film", [(True, 0, False), (False, 3, False), (True, 3, False),
                                                          (False, 3, True), (True, 3, True)])
@pytest.mark.parametrize("static", [False, True])
def test_session_with_film_or_keypoints_equals_full_recomputation(static, film, keypoints, keypoint_film):
    m = model(film, keypoints=keypoints, keypoint_film=keypoint_film)
    session = InferenceSession(m, SessionConfig(num_envs=2), patch_id=LAYOUT.patch_id)
    session._static = static  # the CUDA-graph bodies, eagerly
    rng = np.random.default_rng(2)
    words = ["pick up the red cube", "lift the blue can", "grab the green block and lift it"]
    histories: dict[int, list] = {0: [], 1: []}
    for t in range(9):
        ids = [0, 1] if t % 3 else [0]
        step = [obs(rng, words[(t + e) % 3]) for e in ids]
        out = session.step(step, RANGES, env_ids=ids, return_logits=True)
        for row, (o, e, a) in enumerate(zip(step, ids, out.action_tokens)):
            histories[e].append((o, a))
            window = histories[e][-session.window_timesteps(e):]
            n = sum(len(o.tokens) + len(a) for o, a in window)
            with torch.no_grad():
                ref = m.logits(m(*window_inputs(window))[0, n - 3:n - 1]).float()
            for k, (lo, hi) in enumerate(RANGES):
                np.testing.assert_allclose(out.logits[row, k, lo:hi].numpy(), ref[k, lo:hi].numpy(), atol=1e-4, rtol=1e-3)


def test_keypoint_options_are_checked_and_counted():
    with pytest.raises(ValueError, match=r"keypoints must be an int >= 0, got -1"):
        ModelConfig(**BASE, keypoints=-1)
    with pytest.raises(ValueError, match=r"keypoints must be an int >= 0, got True"):
        ModelConfig(**BASE, keypoints=True)
    with pytest.raises(ValueError, match=r"keypoints reads the patch block's features: .* got 'vq'"):
        ModelConfig(**BASE, keypoints=4, image_encoder="vq")
    m = model(False, keypoints=5)
    assert m.cfg.num_params() == m.num_params() == model(False).num_params() + (8 * 5 + 5) + (2 * 5 * 32 + 32)
    assert TrainConfig(keypoints=5).model_config(LAYOUT).keypoints == 5
    assert TrainConfig().model_config(LAYOUT).keypoints == 0


def test_keypoints_are_the_expected_cell_of_each_image():
    m = model(False, keypoints=2)
    with torch.no_grad():  # keypoint 0 reads channel 0, keypoint 1 channel 1, sharply
        m.keypoints.maps.weight.zero_()
        m.keypoints.maps.bias.zero_()
        m.keypoints.maps.weight[0, 0] = m.keypoints.maps.weight[1, 1] = 60.0
    G = m.cfg.patch_grid  # 4 cells a patch side
    # a 2x3-patch image, then a 1x2 one
    pos = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [0, 0], [0, 1]])
    feats = torch.zeros(len(pos), 8, G, G)
    feats[4, 0, 2, 1] = 1.0  # image 0, patch (1, 1), cell (2, 1)
    feats[7, 0, 3, 3] = 1.0  # image 1, patch (0, 1), cell (3, 3)
    feats[0, 1, 0, 0] = feats[5, 1, 0, 0] = 1.0  # image 0, channel 1: two equal peaks, their midpoint
    xy, image = m.keypoints.coordinates(feats, pos)
    assert image.tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    expected = torch.tensor([[[1 + 1.5 / G, 1 + 2.5 / G], [(0.5 / G + 2 + 0.5 / G) / 2, (0.5 / G + 1 + 0.5 / G) / 2]],
                             [[1 + 3.5 / G, 3.5 / G], [1.0, 0.5]]])  # image 1, channel 1 flat: the centre of 1x2 patches
    torch.testing.assert_close(xy[:2], expected, atol=1e-5, rtol=0.0)
    # what a patch gets depends on its own image only, and the same for each of its patches
    emb = m.embed_patches(torch.rand(len(pos), 3, 16, 16) - 0.5, pos)
    x = torch.rand(len(pos), 3, 16, 16) - 0.5
    other = x.clone()
    other[6:] = torch.rand(2, 3, 16, 16) - 0.5  # another second image
    a, b = m.embed_patches(x, pos), m.embed_patches(other, pos)
    torch.testing.assert_close(a[:6], b[:6], atol=0.0, rtol=0.0)
    kp = m.keypoints(m.patch_embed.features(x), pos)
    assert torch.equal(kp[0], kp[5]) and not torch.allclose(kp[0], kp[6]) and emb.shape == (8, 32)


@torch.no_grad()
def test_untrained_keypoints_change_nothing():
    rng = np.random.default_rng(3)
    window = [(obs(rng, "pick up the red cube"), np.array([CONT + 3, DISC + 1])) for _ in range(2)]
    args = window_inputs(window)
    plain, kp = model(False), model(False, keypoints=4, randomise=False)
    torch.testing.assert_close(kp(*args), plain(*args), atol=0.0, rtol=0.0)
    assert (model(False, keypoints=4)(*args) - plain(*args)).abs().amax() > 1e-3  # trained ones do change it


def test_instruction_conditioned_keypoints_move_with_their_own_timesteps_instruction():
    with pytest.raises(ValueError, match=r"keypoint_film conditions the keypoint maps .* got 0, 'patches' and 'early'"):
        ModelConfig(**BASE, keypoint_film=True)
    m = model(False, keypoints=3, keypoint_film=True)
    assert m.cfg.num_params() == m.num_params() == model(False, keypoints=3).num_params() + 32 * 16 + 16
    assert TrainConfig(keypoints=3, keypoint_film=True).model_config(LAYOUT).keypoint_film
    with pytest.raises(ValueError, match=r"conditioned on the instruction .* pass each patch's instruction vector"):
        m.embed_patches(torch.zeros(4, 3, 16, 16), torch.zeros(4, 2, dtype=torch.long))
    with torch.no_grad():  # gains that differ between two colour words (the table's vectors are small)
        m.keypoints.film.weight.normal_(0.0, 20.0)
    rng = np.random.default_rng(4)
    a1, a2 = np.array([CONT + 3, DISC + 1]), np.array([CONT + 9, DISC + 2])
    first, second = obs(rng, "pick up the green cube"), obs(rng, "lift the blue can")
    n_text = len(TOK.encode_text("pick up the green cube"))
    recoloured = ObsTokens(np.concatenate([TOK.encode_text("pick up the blue cube"), first.tokens[n_text:]]),
                           first.patches, first.patch_pos)  # the same length: the positions stay
    x = m.embed(*window_inputs([(first, a1), (second, a2)]))
    y = m.embed(*window_inputs([(recoloured, a1), (second, a2)]))
    slots1 = np.flatnonzero(first.tokens == LAYOUT.patch_id)
    n1 = len(first.tokens) + 2
    assert (x[0, slots1] - y[0, slots1]).abs().amax() > 1e-3  # the first image's keypoints follow its words
    torch.testing.assert_close(x[0, n1:], y[0, n1:], atol=1e-6, rtol=0.0)  # the second timestep's do not move
    # and the instruction vector of a patch is its timestep's mean text embedding
    tokens, local, pidx, patches, _ = window_inputs([(first, a1), (second, a2)])
    got = m.patch_instructions(tokens, local, pidx, len(patches))
    table = m.wte.weight
    torch.testing.assert_close(got[0], table[torch.from_numpy(first.tokens[:n_text])].mean(0), atol=1e-6, rtol=0.0)
    torch.testing.assert_close(got[-1], table[torch.from_numpy(second.tokens[:len(TOK.encode_text("lift the blue can"))])]
                               .mean(0), atol=1e-6, rtol=0.0)
