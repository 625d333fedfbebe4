"""Model presets, parameter counts, embeddings and the loss of the Gato transformer."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omnipolicy.agent import PRESETS, GatoModel, ModelConfig, get_preset
from omnipolicy.agent.model import gaussian_bin_targets
from omnipolicy.agent.synthetic import SyntheticWindows
from omnipolicy.agent.train import to_tensors, train_command
from omnipolicy.tokenizers import Tokenizer

LAYOUT = Tokenizer.default().layout


def tiny_config(**overrides) -> ModelConfig:
    base = dict(n_layer=2, n_embd=32, n_head=4, d_ff=64, context=64, local_positions=32, patch_channels=8, patch_stride=4)
    return ModelConfig(**{**base, **overrides}).with_layout(LAYOUT)


def batch_with_images(seed: int = 0, batch_size: int = 2, context: int = 64) -> dict[str, torch.Tensor]:
    src = SyntheticWindows(LAYOUT, context=context, batch_size=batch_size, image_patches=4, seed=seed)
    return to_tensors(src.next_batch(), torch.device("cpu"))


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_param_count_matches_instantiated_model(name):
    cfg = PRESETS[name].with_layout(LAYOUT)
    with torch.device("meta"):
        model = GatoModel(cfg)
    assert model.num_params() == cfg.num_params() == sum(p.numel() for p in model.parameters())


def test_paper_presets_have_the_papers_shapes():
    shapes = {n: (c.n_layer, c.n_embd, c.n_head, c.d_ff, c.context) for n, c in PRESETS.items()}
    assert shapes["gato-79m"] == (8, 768, 24, 3072, 1024)
    assert shapes["gato-364m"] == (12, 1536, 12, 6144, 1024)
    assert shapes["gato-1.18b"] == (24, 2048, 16, 8192, 1024)


def test_list_presets_prints_the_counts_of_the_models(capsys):
    train_command(["--list-presets"], prog="omnipolicy train")
    out = capsys.readouterr().out
    for name, cfg in PRESETS.items():
        line = next(l for l in out.splitlines() if l.startswith(name + " "))
        printed = int(re.search(r"([\d,]{5,})", line).group(1).replace(",", ""))
        with torch.device("meta"):
            assert printed == GatoModel(cfg.with_layout(LAYOUT)).num_params()


def test_train_help_lists_presets_with_counts(capsys):
    with pytest.raises(SystemExit):
        train_command(["--help"], prog="omnipolicy train")
    out = capsys.readouterr().out
    n = PRESETS["cpu-small"].with_layout(LAYOUT).num_params()
    assert f"{n:,d}" in out and "gato-1.18b" in out


def test_config_validation_and_preset_lookup_errors():
    with pytest.raises(ValueError, match=r"n_embd=100 must be divisible by n_head=3"):
        ModelConfig(n_layer=1, n_embd=100, n_head=3, d_ff=8)
    with pytest.raises(KeyError, match=r"Unknown model preset 'gato-9b'. Available presets: gato-79m"):
        get_preset("gato-9b")
    with pytest.raises(ValueError, match=r"needs cfg.vocab_size"):
        GatoModel(PRESETS["cpu-tiny"])
    assert ModelConfig.from_dict(tiny_config().to_dict()) == tiny_config()


def test_causal_and_patches_change_only_their_slot_and_later_positions():
    torch.manual_seed(0)
    model = GatoModel(tiny_config()).eval()
    b = batch_with_images()
    h = model(b["tokens"], b["local_pos"], b["patch_index"], b["patches"], b["patch_pos"])  # (B, S, D)
    # change the third patch of row 0: positions before its slot are unchanged, its slot and later ones move
    slot = int(torch.nonzero(b["patch_index"][0] >= 0)[2])
    patches = b["patches"].clone()
    patches[int(b["patch_index"][0, slot])] += 0.1 * torch.randn(3, 16, 16)
    h2 = model(b["tokens"], b["local_pos"], b["patch_index"], patches, b["patch_pos"])
    assert torch.equal(h2[0, :slot], h[0, :slot])
    assert (h2[0, slot] - h[0, slot]).abs().max() > 1e-3
    assert torch.equal(h2[1], h[1])
    # a patch's row/col position matters
    pos = b["patch_pos"].clone()
    pos[int(b["patch_index"][0, slot])] += 1
    h3 = model(b["tokens"], b["local_pos"], b["patch_index"], b["patches"], pos)
    assert (h3[0, slot] - h[0, slot]).abs().max() > 1e-3
    # positions past the 128-bin table are clamped to its last entry
    far = b["patch_pos"].clone().fill_(500)
    at_end = b["patch_pos"].clone().fill_(model.cfg.pos_bins - 1)
    args = (b["tokens"], b["local_pos"], b["patch_index"], b["patches"])
    assert torch.equal(model(*args, far), model(*args, at_end))


def test_flat_patches_of_different_intensity_embed_differently():
    torch.manual_seed(0)
    model = GatoModel(tiny_config()).eval()
    flat = torch.stack([torch.full((3, 16, 16), v) for v in (-0.25, 0.0, 0.25)])  # black, grey, white
    emb = model.patch_embed(flat)  # (3, D)
    assert torch.cdist(emb, emb).fill_diagonal_(1.0).min() > 1e-2


def test_value_features_give_continuous_bins_a_smooth_shared_term():
    torch.manual_seed(0)
    model = GatoModel(tiny_config())
    lo, hi = LAYOUT.continuous_offset, LAYOUT.continuous_offset + LAYOUT.num_bins
    ids = torch.tensor([5, lo, lo + 1, lo + 512, hi - 1, LAYOUT.discrete_offset, LAYOUT.separator_id])
    extra = model.wte(ids) - model.wte.weight[ids]  # what the value term adds
    assert extra[[0, 5, 6]].abs().max() == 0  # text, discrete and special ids: the table alone
    assert extra[1:5].norm(dim=1).min() > 1e-3
    assert (extra[1] - extra[2]).norm() < 0.1 * (extra[1] - extra[3]).norm()  # neighbours share their value term
    plain = GatoModel(tiny_config(value_features=0))
    assert plain.wte.value_proj is None and model.num_params() - plain.num_params() == 16 * 32


def test_loss_on_masked_positions_equals_full_cross_entropy():
    torch.manual_seed(0)
    model = GatoModel(tiny_config()).eval()
    b = batch_with_images(seed=1)
    loss_sum, count = model.loss_terms(b)
    h = model(b["tokens"], b["local_pos"], b["patch_index"], b["patches"], b["patch_pos"])
    logits = model.logits(h)[:, :-1]  # (B, S-1, V): every position
    mask = b["loss_mask"][:, 1:]
    full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["tokens"][:, 1:].reshape(-1), reduction="none")
    expected = (full * mask.reshape(-1)).sum()
    assert int(count) == int(mask.sum()) > 0
    torch.testing.assert_close(loss_sum, expected, rtol=1e-5, atol=1e-4)
    # the pruned last block gives the gradients of the full computation too
    loss_sum.backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    expected.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")
    # an untrained model is near uniform over the vocabulary
    assert abs(loss_sum.item() / int(count) - np.log(LAYOUT.vocab_size)) < 0.5


def test_gaussian_bin_targets_are_normalised_bumps_truncated_at_the_ends():
    q = gaussian_bin_targets(torch.tensor([0, 5, 1023]), 1024, sigma=2.0)
    torch.testing.assert_close(q.sum(-1), torch.ones(3))
    assert q.argmax(-1).tolist() == [0, 5, 1023]
    torch.testing.assert_close(q[1, 3], q[1, 7])  # symmetric around its centre
    assert q[1, 5] == pytest.approx(0.1974, abs=1e-3)  # P(|z| < 0.25) for sigma 2: the bin's own share
    assert q[0, 0] == pytest.approx(0.1974 / 0.5987, abs=1e-3)  # mass below bin 0's lower edge (z < -0.25) cut off
    assert q[1, 20] < 1e-10
    one_hot = gaussian_bin_targets(torch.tensor([7]), 16, sigma=1e-3)
    assert one_hot[0, 7] == pytest.approx(1.0)


def test_gaussian_bin_loss_is_the_kl_on_continuous_targets_and_cross_entropy_on_the_others():
    torch.manual_seed(0)
    model = GatoModel(tiny_config()).eval()
    b = batch_with_images(seed=2)
    lo, hi = model.cfg.continuous_ids
    targets_at = b["loss_mask"].nonzero()[::3]  # every third target becomes a discrete action
    b["tokens"][targets_at[:, 0], targets_at[:, 1]] = LAYOUT.discrete_offset + 2
    loss_sum, count = model.loss_terms(b, bin_sigma=3.0)
    h = model(b["tokens"], b["local_pos"], b["patch_index"], b["patches"], b["patch_pos"])
    mask = b["loss_mask"][:, 1:]
    logp = F.log_softmax(model.logits(h)[:, :-1][mask].float(), -1)  # (N, V)
    targets = b["tokens"][:, 1:][mask]
    cont = (targets >= lo) & (targets < hi)
    assert 0 < int(cont.sum()) < len(targets)  # both kinds of target in the batch
    q = gaussian_bin_targets(targets[cont] - lo, hi - lo, 3.0)
    kl = (q * (q.log().clamp_min(-1e30) - logp[cont][:, lo:hi])).sum()
    ce = -logp[~cont].gather(1, targets[~cont, None]).sum()
    assert int(count) == len(targets)
    torch.testing.assert_close(loss_sum, kl + ce, rtol=1e-5, atol=1e-3)
    assert model.loss_terms(b, bin_sigma=0.0)[0] == model.loss_terms(b)[0]  # 0: Gato's one-hot cross-entropy


def test_hidden_action_inputs_read_padding_after_each_separator_and_nothing_else():
    model = GatoModel(tiny_config(action_inputs="hidden"))
    sep, pad, c = LAYOUT.separator_id, LAYOUT.pad_id, LAYOUT.continuous_offset
    # a prompt timestep, then two timesteps: text + values, separator, 2 action tokens
    step = [5, 6, c + 1, c + 2, sep, c + 900, c + 901]
    tokens = torch.tensor([step * 3 + [pad, pad]])
    local = torch.tensor([list(range(7)) * 3 + [0, 0]])
    got = model.input_tokens(tokens, local)[0].tolist()
    assert got == [5, 6, c + 1, c + 2, sep, pad, pad] * 3 + [pad, pad]
    assert torch.equal(GatoModel(tiny_config()).input_tokens(tokens, local), tokens)  # Gato: actions are read
    # the action tokens no longer change any output; an observation token still does
    other = tokens.clone()
    other[0, [5, 6, 12, 13]] = c + 3
    obs = tokens.clone()
    obs[0, 2] = c + 500
    run = lambda t: model(t, local, torch.full_like(t, -1), None, None)  # noqa: E731
    model.eval()
    assert torch.equal(run(tokens), run(other)) and not torch.allclose(run(tokens), run(obs))
    with pytest.raises(ValueError, match=r"action_inputs must be one of \('tokens', 'hidden'\), got 'masked'"):
        tiny_config(action_inputs="masked")
    with pytest.raises(ValueError, match="needs the layout's ids"):
        GatoModel(ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, action_inputs="hidden").with_vocab(100))


def test_tied_head_and_every_parameter_gets_a_gradient_without_images():
    torch.manual_seed(0)
    model = GatoModel(tiny_config())
    assert model.lm_head.weight is model.wte.weight
    src = SyntheticWindows(LAYOUT, context=64, batch_size=2, image_patches=0, seed=0)
    loss_sum, count = model.loss_terms(to_tensors(src.next_batch(), torch.device("cpu")))
    (loss_sum / count).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []  # DDP needs every parameter in the graph
