"""Mixture-of-experts feed-forward: routing, auxiliary losses, equivalences, session, checkpoints, training."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch

from omnipolicy.agent import GatoModel, ModelConfig, TrainConfig, load_meta, load_model_weights, train
from omnipolicy.agent.checkpoint import CheckpointMeta, save_checkpoint
from omnipolicy.agent.inference import InferenceSession, ObsTokens, SessionConfig
from omnipolicy.agent.model import MLP
from omnipolicy.agent.moe import MoE, load_balancing_loss, route, router_z_loss
from omnipolicy.agent.synthetic import SYNTHETIC_TASK_ID, SyntheticWindows, synthetic_spec
from omnipolicy.agent.train import LossModule, accumulate_gradients, to_tensors, train_command
from omnipolicy.tokenizers import Tokenizer

LAYOUT = Tokenizer.default().layout
CONT = LAYOUT.continuous_offset
TASKS = {SYNTHETIC_TASK_ID: synthetic_spec(6, 2)}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/agent/conftest.py


def tiny_config(**overrides) -> ModelConfig:
    base = dict(n_layer=2, n_embd=32, n_head=4, d_ff=64, context=64, local_positions=32, patch_channels=8,
                patch_stride=4, ffn="moe", moe_experts=4, moe_top_k=2)
    return ModelConfig(**{**base, **overrides}).with_layout(LAYOUT)


def tiny_model(seed: int = 0, **overrides) -> GatoModel:
    torch.manual_seed(seed)
    return GatoModel(tiny_config(**overrides))


def batch(seed: int = 0, images: int = 4, batch_size: int = 2) -> dict[str, torch.Tensor]:
    src = SyntheticWindows(LAYOUT, context=64, batch_size=batch_size, image_patches=images, seed=seed)
    return to_tensors(src.next_batch(), torch.device("cpu"))


def forward_args(b: dict[str, torch.Tensor]) -> tuple:
    return b["tokens"], b["local_pos"], b["patch_index"], b["patches"], b["patch_pos"]


# ------------------------------------------------------------------ routing


def test_every_token_goes_to_exactly_k_experts_with_weights_summing_to_one():
    # expert e outputs the constant basis vector e, so a token's output is its gate vector over the experts
    E, k = 6, 2
    cfg = tiny_config(n_embd=8, n_head=2, moe_experts=E, moe_top_k=k)
    torch.manual_seed(0)
    layer = MoE(cfg, lambda: MLP(cfg)).double()
    with torch.no_grad():
        for e, expert in enumerate(layer.experts):
            expert.c_fc.weight.zero_(), expert.c_fc.bias.zero_(), expert.c_proj.weight.zero_()
            expert.c_proj.bias.copy_(torch.eye(8, dtype=torch.float64)[e])
        layer.router.weight.normal_()
    x = torch.randn(3, 50, 8, dtype=torch.float64)  # (B, S, D): any leading shape
    gates = layer(x).reshape(-1, 8)  # (T, D)
    assert torch.all(gates[:, E:] == 0)
    assert ((gates[:, :E] > 0).sum(-1) == k).all()  # exactly k experts per token
    torch.testing.assert_close(gates.sum(-1), torch.ones(150, dtype=torch.float64))
    weights, experts = route(layer.router_logits(x.reshape(-1, 8)), k)
    expected = torch.zeros(150, E, dtype=torch.float64).scatter(1, experts, weights)
    torch.testing.assert_close(gates[:, :E], expected)  # the router's top-k, renormalised
    assert len(set(experts.reshape(-1).tolist())) == E  # the check covered every expert


def test_top_k_weights_are_the_renormalised_largest_probabilities():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 0.0, 0.0, 1.0]])
    weights, experts = route(logits, k=2)
    assert experts.tolist() == [[3, 2], [0, 3]]
    e = math.exp
    assert weights[0].tolist() == pytest.approx([e(3) / (e(3) + e(2)), e(2) / (e(3) + e(2))])
    assert weights[1].tolist() == pytest.approx([e(3) / (e(3) + e(1)), e(1) / (e(3) + e(1))])


# --------------------------------------------------------------- aux losses


def test_load_balancing_loss_is_one_when_balanced_and_larger_when_skewed():
    E = 4
    eye = torch.eye(E)
    balanced = (10.0 * eye + 9.0 * eye.roll(1, dims=1)).repeat(3, 1)  # (12, E): cyclic, so every expert alike
    for k in (1, 2):
        probs = balanced.softmax(-1)
        assert float(load_balancing_loss(probs, route(balanced, k)[1])) == pytest.approx(1.0, abs=1e-6)
    losses = []
    for skew in (0.0, 0.5, 2.0, 10.0):  # more and more tokens prefer expert 0
        logits = torch.randn(64, E, generator=torch.Generator().manual_seed(0)) * 0.1
        logits[:, 0] += skew
        losses.append(float(load_balancing_loss(logits.softmax(-1), route(logits, 1)[1])))
    assert all(a < b for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] == pytest.approx(E, rel=1e-3)  # every token on one expert, with probability ~1: E


def test_router_z_loss_matches_a_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-1.0, 4.0, 0.5]], dtype=torch.float64)
    lse = [math.log(sum(math.exp(v) for v in row)) for row in logits.tolist()]
    assert float(router_z_loss(logits)) == pytest.approx(sum(v * v for v in lse) / 3, rel=1e-12)
    assert float(router_z_loss(logits[:0])) == 0.0  # no tokens (a loss pass with no targets in the last block)


def test_training_on_the_auxiliary_loss_balances_a_skewed_router():
    cfg = tiny_config(n_embd=16, n_head=2, moe_experts=4, moe_top_k=2)
    torch.manual_seed(0)
    layer = MoE(cfg, lambda: MLP(cfg))
    x = torch.randn(512, 16)
    x[:, 0] = 1.0 + 0.1 * x[:, 0]
    with torch.no_grad():
        layer.router.weight[0, 0] = 3.0  # expert 0 chosen by nearly every token
    opt = torch.optim.SGD(layer.router.parameters(), lr=0.5)
    with torch.no_grad():
        layer(x)
    first = layer.stats
    for _ in range(100):
        layer(x)
        opt.zero_grad()
        layer.stats.aux.backward()
        opt.step()
    with torch.no_grad():
        layer(x)
    assert float(first.aux) > 1.2 and float(layer.stats.aux) < float(first.aux) - 0.15
    assert float(layer.stats.load.max()) < float(first.load.max())  # the busiest expert got less of the load
    assert float(layer.stats.entropy) <= math.log(4) + 1e-6


# -------------------------------------------------------------- equivalences


def test_one_expert_top_1_equals_the_dense_model_with_the_same_weights():
    dense = tiny_model(ffn="dense").double()
    moe = GatoModel(tiny_config(moe_experts=1, moe_top_k=1)).double()
    state = {re.sub(r"\.mlp\.", ".mlp.experts.0.", k): v for k, v in dense.state_dict().items()}
    missing, unexpected = moe.load_state_dict(state, strict=False)
    assert sorted(missing) == [f"blocks.{i}.mlp.router.weight" for i in range(2)] and not unexpected
    b = batch()
    b["patches"] = b["patches"].double()
    with torch.no_grad():
        torch.testing.assert_close(moe(*forward_args(b)), dense(*forward_args(b)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(moe.loss_terms(b)[0], dense.loss_terms(b)[0], rtol=1e-12, atol=1e-12)


def test_dispatch_and_the_static_all_experts_path_agree():
    cfg = tiny_config()
    torch.manual_seed(3)
    layer = MoE(cfg, lambda: MLP(cfg)).double().eval()
    x = torch.randn(40, 32, dtype=torch.float64)
    weights, experts = route(layer.router_logits(x), cfg.moe_top_k)
    torch.testing.assert_close(layer._combine_all(x, weights, experts), layer._dispatch(x, weights, experts))


def test_loss_terms_last_block_path_equals_the_full_forward():
    model = tiny_model(seed=1).eval()
    b = batch(seed=2)
    with torch.no_grad():
        h = model(*forward_args(b))
        mask = b["loss_mask"][:, 1:]
        logits = model.logits(h[:, :-1][mask]).float()
        full = torch.nn.functional.cross_entropy(logits, b["tokens"][:, 1:][mask], reduction="sum")
        loss_sum, count = model.loss_terms(b)
    assert int(count) == int(mask.sum())
    torch.testing.assert_close(loss_sum, full, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------- gradients


def test_gradients_reach_every_expert_that_received_tokens_and_only_those():
    model = tiny_model(seed=4, moe_experts=8, moe_top_k=1).train()
    x = torch.randn(64, 32)
    x[:, 0] = 3.0 + x[:, 0].abs()  # every token has a large first feature ...
    layer = model.blocks[0].mlp
    with torch.no_grad():
        layer.router.weight[7, 0] = -50.0  # ... that sends expert 7's logit far below the others
    out = layer(x)
    (out.square().sum() + layer.stats.aux).backward()
    load = layer.stats.load
    assert load[7] == 0 and (load[:7] > 0).sum() >= 3
    for e, expert in enumerate(layer.experts):
        g = expert.c_fc.weight.grad
        assert g is not None  # an idle expert still gets a (zero) gradient: data-parallel training needs one per step
        assert (float(g.abs().sum()) > 0) == bool(load[e] > 0), (e, float(load[e]))
    assert float(layer.router.weight.grad.abs().sum()) > 0

    # the whole model's training loss: every expert that received tokens in either block gets a gradient
    model.zero_grad()
    loss_sum, count, router = LossModule(model)(batch(seed=5))
    assert router is not None and float(router.detach()) > 0
    (loss_sum / count + router).backward()
    for blk, stats in zip(model.blocks, model.router_stats()):
        for e, expert in enumerate(blk.mlp.experts):
            assert (float(expert.c_proj.weight.grad.abs().sum()) > 0) == bool(stats.load[e] > 0)
        assert float(blk.mlp.router.weight.grad.abs().sum()) > 0
    with torch.no_grad():  # validation: no router loss, and the training step's statistics stay for the logs
        assert LossModule(model.eval())(batch(seed=6))[2] is None
    assert len(model.router_stats()) == 2


def test_dropless_routing_makes_micro_batches_give_the_whole_batch_gradient():
    # without capacity limits a token's output does not depend on the other tokens: splitting the batch into
    # micro-batches gives the same token-loss gradient (the router losses, statistics of each micro-batch, are off)
    b = SyntheticWindows(LAYOUT, context=64, batch_size=4, image_patches=4, seed=6).next_batch()
    b["patches"] = b["patches"].astype(np.float64)

    def grads(accum: int) -> dict[str, torch.Tensor]:
        model = tiny_model(seed=6, moe_aux_coef=0.0, moe_z_coef=0.0).double()
        accumulate_gradients(LossModule(model), b, grad_accum=accum)
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    whole, split = grads(1), grads(2)
    assert sum(float(g.abs().sum()) for g in whole.values()) > 1.0
    for k in whole:
        torch.testing.assert_close(split[k], whole[k], rtol=1e-9, atol=1e-12, msg=lambda m: f"{k}: {m}")


# ------------------------------------------------------------- config, params


def test_parameter_counts_total_and_active_are_exact():
    for overrides in (dict(moe_experts=8, moe_top_k=2), dict(moe_experts=3, moe_top_k=3), dict(bias=False),
                      dict(image_encoder="resampler", fusion="cross-attention")):  # with the vision options too
        cfg = tiny_config(**overrides)
        with torch.device("meta"):
            model = GatoModel(cfg)
        assert cfg.num_params() == model.num_params() == sum(p.numel() for p in model.parameters())
        idle = sum(p.numel() for blk in model.blocks for e in blk.mlp.experts[cfg.moe_top_k:] for p in e.parameters())
        assert cfg.num_active_params() == model.num_params() - idle
    dense = tiny_config(ffn="dense")
    assert dense.num_active_params() == dense.num_params()
    # equal active parameters: one expert of half the width, top-2 of 8, matches the dense MLP up to the router
    half = tiny_config(d_ff=32, moe_experts=8, moe_top_k=2)
    assert half.num_active_params() - dense.num_params() == 2 * (8 * 32 + 32)  # a router and a second c_proj bias


def test_config_validation_names_what_was_expected():
    with pytest.raises(ValueError, match=r"ModelConfig.ffn must be one of \('dense', 'moe'\), got 'sparse'"):
        tiny_config(ffn="sparse")
    with pytest.raises(ValueError, match=r"moe_top_k must be an int in \[1, moe_experts=2\], got 3"):
        tiny_config(moe_experts=2, moe_top_k=3)
    with pytest.raises(ValueError, match=r"moe_experts must be an int >= 1, got 0"):
        tiny_config(moe_experts=0)
    with pytest.raises(ValueError, match=r"moe_aux_coef must be a float >= 0, got -0.1"):
        tiny_config(moe_aux_coef=-0.1)
    with pytest.raises(ValueError, match=r"--moe-experts configure a mixture-of-experts .* 'dense'; add --ffn moe"):
        TrainConfig(synthetic=True, moe_experts=4)
    with pytest.raises(ValueError, match=r"TrainConfig: ModelConfig.moe_top_k must be an int in \[1, moe_experts=1\]"):
        TrainConfig(synthetic=True, ffn="moe", moe_experts=1)
    cfg = TrainConfig(synthetic=True, ffn="moe", moe_experts=4, moe_top_k=1).model_config(LAYOUT)
    assert (cfg.ffn, cfg.moe_experts, cfg.moe_top_k, cfg.moe_aux_coef) == ("moe", 4, 1, 0.01)


def test_list_presets_with_moe_flags_shows_total_and_active_counts(capsys):
    train_command(["--list-presets", "--ffn", "moe", "--moe-experts", "4", "--moe-top-k", "1"], prog="omnipolicy train")
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("cpu-tiny "))
    total, active = (int(v.replace(",", "")) for v in re.findall(r"([\d,]{5,}) \(", line))
    cfg = dataclasses.replace(TrainConfig().model_config(LAYOUT), ffn="moe", moe_experts=4, moe_top_k=1)
    assert (total, active) == (cfg.num_params(), cfg.num_active_params()) and "4 top-1" in line


# ------------------------------------------------------ session, checkpoints


def session_and_reference_logits(model: GatoModel, steps: int, seed: int = 0, session: InferenceSession | None = None):
    """Yield, for each step of a 2-env episode, the session's masked logits and those of a full forward."""
    ranges = np.array([[CONT, CONT + 1024], [CONT, CONT + 1024]])
    session = session or InferenceSession(model, SessionConfig(num_envs=2), patch_id=LAYOUT.patch_id)
    dev = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    history: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[], []]
    for _ in range(steps):
        obs = []
        for e in range(2):
            tok = np.concatenate([[LAYOUT.patch_id] * 2, rng.integers(CONT, CONT + 1024, 4 + e), [LAYOUT.separator_id]])
            obs.append(ObsTokens(tok.astype(np.int64), rng.uniform(-0.25, 0.25, (2, 3, 16, 16)).astype(np.float32),
                                 np.array([[0, 0], [0, 1]])))
        out = session.step(obs, ranges, return_logits=True)
        for e in range(2):
            history[e].append((obs[e], out.action_tokens[e]))
            window = history[e][-session.window_timesteps(e):]
            tokens = np.concatenate([np.concatenate([o.tokens, a]) for o, a in window])
            local = np.concatenate([np.arange(len(o.tokens) + len(a)) for o, a in window])
            is_patch = tokens == LAYOUT.patch_id
            pidx = np.where(is_patch, np.cumsum(is_patch) - 1, -1)
            t = lambda a: torch.from_numpy(np.asarray(a)).to(dev)  # noqa: E731
            with torch.no_grad():
                h = model(t(tokens)[None], t(local)[None], t(pidx)[None], t(np.concatenate([o.patches for o, _ in window])),
                          t(np.concatenate([o.patch_pos for o, _ in window])))
            n = len(tokens)
            ref = model.logits(h[0, n - 3 : n - 1]).float().cpu()
            yield out.logits[e][:, CONT:CONT + 1024], ref[:, CONT:CONT + 1024]


def test_kv_cached_session_equals_full_recomputation():
    model = tiny_model(seed=7).eval()
    compared = 0
    for got, ref in session_and_reference_logits(model, steps=14):  # ~12 tokens a step: windows of 64 get evicted
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        compared += 1
    assert compared == 28


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_session_equals_full_recomputation():
    model = tiny_model(seed=7).cuda().eval()
    session = InferenceSession(model, SessionConfig(num_envs=2, dtype="float32"), patch_id=LAYOUT.patch_id)
    for got, ref in session_and_reference_logits(model, steps=14, session=session):
        torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)
    kinds = [key[0] for key in session._graphs]
    assert session.use_graphs and "prefill" in kinds and "decode" in kinds  # the MoE step was captured, not eager


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_training_learns(tmp_path):
    cfg = TrainConfig(out=tmp_path, preset="cpu-tiny", context=64, steps=120, batch_size=8, lr=3e-3, warmup_steps=10,
                      save_every=1000, progress=False, tensorboard=False, device="cuda", ffn="moe", moe_experts=4)
    src = SyntheticWindows(LAYOUT, context=64, batch_size=8, num_windows=8, seed=0)
    result = train(cfg, loader=src, layout=LAYOUT, tasks=TASKS)
    assert result.losses[0] > 5.0 and np.mean(result.losses[-5:]) < 0.2, result.losses[-10:]


def test_checkpoint_round_trip_gives_identical_outputs_and_old_checkpoints_load_as_dense(tmp_path):
    model = tiny_model(seed=8).eval()
    path = save_checkpoint(tmp_path / "moe", model, CheckpointMeta(model.cfg, LAYOUT, TASKS))
    again, meta = load_model_weights(path)
    assert (meta.model.ffn, meta.model.moe_experts, meta.model.moe_top_k) == ("moe", 4, 2)
    b = batch(seed=9)
    with torch.no_grad():
        assert torch.equal(again.logits(again(*forward_args(b))), model.logits(model(*forward_args(b))))

    dense = tiny_model(seed=8, ffn="dense").eval()
    old = save_checkpoint(tmp_path / "old", dense, CheckpointMeta(dense.cfg, LAYOUT, TASKS))
    d = json.loads((old / "checkpoint.json").read_text())
    for key in ("ffn", "moe_experts", "moe_top_k", "moe_aux_coef", "moe_z_coef"):
        del d["model"][key]  # a checkpoint written before the option existed
    (old / "checkpoint.json").write_text(json.dumps(d))
    loaded, meta = load_model_weights(old)
    assert meta.model.ffn == "dense" and isinstance(loaded.blocks[0].mlp, MLP)
    with torch.no_grad():
        assert torch.equal(loaded(*forward_args(b)), dense(*forward_args(b)))


# ------------------------------------------------------------------- training


def test_train_cli_with_moe_learns_and_logs_the_routing(tmp_path, capsys):
    train_command(["--synthetic", "--ffn", "moe", "--moe-experts", "4", "--moe-top-k", "2", "--out", str(tmp_path),
                   "--steps", "60", "--batch-size", "8", "--context", "64", "--lr", "3e-3", "--warmup-steps", "5",
                   "--log-every", "1", "--save-every", "60", "--no-progress", "--threads", "1", "--dtype", "float32"],
                  prog="omnipolicy train")
    out = capsys.readouterr().out
    meta = load_meta(tmp_path)
    assert (meta.model.ffn, meta.model.moe_experts, meta.model.moe_top_k) == ("moe", 4, 2)
    assert "trained 60 steps" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "tb"))
    tb.Reload()
    loss = [e.value for e in tb.Scalars("train/loss")]
    assert np.mean(loss[:5]) > 7.5 and np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.5, loss  # from ~log(vocab), falling
    for layer in range(2):
        shares = [tb.Scalars(f"moe/layer{layer}/load_expert{e}")[-1].value for e in range(4)]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5) and max(shares) <= 0.5 + 1e-6, shares  # k = 2: <= 1/2
        assert 0 < tb.Scalars(f"moe/layer{layer}/entropy")[-1].value <= math.log(4) + 1e-5
    assert 0.5 < tb.Scalars("moe/aux_loss")[-1].value < 4.0  # about 1 near balance, 4 (= E) on one expert


def test_moe_overfits_a_tiny_dataset(tmp_path):
    cfg = TrainConfig(out=tmp_path, preset="cpu-tiny", context=64, steps=120, batch_size=8, lr=3e-3, warmup_steps=10,
                      save_every=1000, progress=False, tensorboard=False, threads=1, dtype="float32", ffn="moe",
                      moe_experts=4)
    src = SyntheticWindows(LAYOUT, context=64, batch_size=8, num_windows=8, seed=0)
    result = train(cfg, loader=src, layout=LAYOUT, tasks=TASKS)
    assert result.losses[0] > 5.0
    assert np.mean(result.losses[-5:]) < 0.1, result.losses[-10:]


def test_module_docstring_example_runs():
    import doctest

    from omnipolicy.agent import moe

    assert doctest.testmod(moe).failed == 0
