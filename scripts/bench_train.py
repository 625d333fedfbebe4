"""Training throughput: our Gato model versus Hugging Face transformers' GPT-2 of the same shape.

Both models get the same batch (a synthetic window batch in the WindowLoader
format: Atari-like timesteps of 36 image patches + 1 action token, and
Meta-World-like timesteps of 39 state tokens + 4 action tokens), the same
depth, width, heads, feed-forward width, context and vocabulary, the same
fused AdamW and gradient clipping, in the same process; their steps are
interleaved and the median step time of each is compared. GPT-2 sees the
patch slots as ordinary token ids and its labels are the same targets
(``-100`` where ``loss_mask`` is off). Our model also runs its ResNet patch
embedding on every image patch.

Two comparisons, each of equal work on the LM head (the number of positions
whose logits each side computes is counted and must be equal):

- ``full_head``: logits at every position on both sides: GPT-2 as shipped
  (``labels=`` computes the logits of all B x S positions) against our model's
  plain forward pass followed by the head at every position. The headline ratio.
- ``target_head``: logits at the target positions only on both sides: our model
  as it trains (:meth:`GatoModel.loss_terms`: the head, and the queries and MLP
  of the last block, at the target positions only) against GPT-2's trunk
  followed by its head at the target positions only. GPT-2 still runs its last
  block at every position, so this ratio leans our way by up to that block.

Target (no earlier issue set one): at least GPT-2's speed on equal work,
``full_head`` ratio >= 1 for every batch kind.

On CUDA (bf16 autocast) it also prints model FLOPs utilisation (nanoGPT's
estimate: 6 N + 12 L S D FLOPs per token, against the GPU's dense bf16 peak).

    python scripts/bench_train.py                       # cpu-small, both batch kinds, float32
    python scripts/bench_train.py --dtype bfloat16      # both models under bf16 autocast
    python scripts/bench_train.py --preset gato-79m --batch-size 8 --device cuda
    python scripts/bench_train.py --quick               # the profile `make bench` runs (batch 4, 3 steps)

Needs ``transformers`` (the ``bench`` extra). Ends with one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: why in omnipolicy/cli.py
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from omnipolicy.agent import GatoModel, get_preset
from omnipolicy.agent.synthetic import SyntheticWindows
from omnipolicy.agent.train import autocast_dtype, to_tensors
from omnipolicy.tokenizers import Tokenizer

BATCH_KINDS = {
    # name: (obs_tokens, image_patches, action_tokens) per timestep
    "atari": (1, 36, 1),
    "metaworld": (39, 0, 4),
}


@dataclass(frozen=True)
class Args:
    """Training tokens/s of our model vs transformers' GPT-2 (same shape, same batch)."""

    preset: str = "cpu-small"
    """Model preset whose shape both models take."""
    batch_size: int = 8
    """Windows per step."""
    context: int | None = None
    """Window length (default: the preset's)."""
    kinds: tuple[Literal["atari", "metaworld"], ...] = ("atari", "metaworld")
    """Batch kinds to measure."""
    steps: int = 6
    """Timed steps per model and kind (after warm-up)."""
    warmup: int = 2
    """Untimed steps per model and kind."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda'."""
    dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    """Autocast dtype of both models (auto: bfloat16 on CUDA and on CPUs with native bf16)."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    peak_tflops: float | None = None
    """GPU dense bf16 peak for MFU (default: 989 for H100/H200, else none)."""
    quick: bool = False
    """The quick profile of `make bench` (batch 4, 1 warm-up and 3 timed steps); flags given with it still apply."""


QUICK = Args(batch_size=4, steps=3, warmup=1, quick=True)
HEADS = ("full_head", "target_head")


def gpt2_like(cfg, vocab_size: int, context: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=vocab_size, n_positions=context, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
        n_inner=cfg.d_ff, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
    )
    return GPT2LMHeadModel._from_config(hf_cfg, attn_implementation="sdpa")


def loss_fns(ours: GatoModel, hf, batch: dict) -> dict[tuple[str, str], Callable[[], torch.Tensor]]:
    """The four training losses, keyed by (head, side): each side's logits at every position or at targets only."""
    tokens, mask = batch["tokens"], batch["loss_mask"]
    labels = torch.where(mask, tokens, torch.full_like(tokens, -100))  # (B, S): GPT-2 shifts them itself
    target_mask = mask[:, 1:]  # (B, S-1): position t predicts token t+1

    def ours_full():
        h = ours(tokens, batch["local_pos"], batch["patch_index"], batch["patches"], batch["patch_pos"])  # (B, S, D)
        logits = ours.logits(h).float()  # (B, S, V): every position, as GPT-2 computes them
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

    def ours_target():
        loss_sum, count = ours.loss_terms(batch)  # the head (and the last block's queries, MLP) at targets only
        return loss_sum / count

    def gpt2_full():
        return hf(input_ids=tokens, labels=labels).loss

    def gpt2_target():
        h = hf.transformer(input_ids=tokens).last_hidden_state  # (B, S, D): every block at every position
        logits = hf.lm_head(h[:, :-1][target_mask]).float()  # (N, V): the head at targets only
        return F.cross_entropy(logits, tokens[:, 1:][target_mask])

    return {("full_head", "ours"): ours_full, ("full_head", "gpt2"): gpt2_full,
            ("target_head", "ours"): ours_target, ("target_head", "gpt2"): gpt2_target}


def logit_positions(head: torch.nn.Module, loss_fn) -> int:
    """How many positions ``loss_fn`` computes logits for: the rows entering the LM head module ``head``."""
    rows: list[int] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: rows.append(inputs[0].shape[:-1].numel()))
    try:
        with torch.no_grad():
            loss_fn()
    finally:
        hook.remove()
    return sum(rows)


def step_fn(model, opt, loss_fn, autocast):
    def step():
        with autocast():
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def main(args: Args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device)
    layout = Tokenizer.default().layout
    preset = get_preset(args.preset)
    context = args.context or preset.context
    cfg = dataclasses.replace(preset, context=context).with_layout(layout)
    torch.manual_seed(0)
    ours = GatoModel(cfg).to(device).train()
    hf = gpt2_like(cfg, layout.vocab_size, context).to(device).train()
    fused = device.type in ("cpu", "cuda")
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused) for m in (ours, hf)]
    amp = autocast_dtype(device, args.dtype)
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else nullcontext
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        sync = torch.cuda.synchronize
    else:
        sync = lambda: None  # noqa: E731
    n_ours, n_hf = ours.num_params(), sum(p.numel() for p in hf.parameters())
    print(f"device {device}, {amp or torch.float32}, threads {torch.get_num_threads()}, preset {args.preset} (context {context}), "
          f"ours {n_ours:,d} params, GPT-2 {n_hf:,d} params, batch {args.batch_size} x {context}")
    results = {}
    for kind in args.kinds:
        obs, patches, actions = BATCH_KINDS[kind]
        src = SyntheticWindows(layout, context=context, batch_size=args.batch_size, obs_tokens=obs,
                               image_patches=patches, action_tokens=actions, seed=0)
        batch = to_tensors(src.next_batch(), device)
        fns = loss_fns(ours, hf, batch)
        models = {"ours": (ours, opts[0]), "gpt2": (hf, opts[1])}
        positions = {key: logit_positions(models[key[1]][0].lm_head, fn) for key, fn in fns.items()}
        for head in HEADS:
            if positions[head, "ours"] != positions[head, "gpt2"]:
                raise RuntimeError(f"{kind} {head}: unequal work, logits at {positions[head, 'ours']} positions "
                                   f"(ours) and {positions[head, 'gpt2']} (GPT-2)")
        steps = {key: step_fn(*models[key[1]], fn, autocast) for key, fn in fns.items()}
        times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
        losses: dict[tuple[str, str], float] = {}
        for i in range(args.warmup + args.steps):
            for key, step in steps.items():  # interleaved: all see the same machine load
                sync()
                t0 = time.perf_counter()
                losses[key] = float(step())
                sync()
                if i >= args.warmup:
                    times[key].append(time.perf_counter() - t0)
        tokens = args.batch_size * context
        res: dict = {"target_fraction": float(batch["loss_mask"].float().mean()), "patches": int(batch["patches"].shape[0])}
        for head in HEADS:
            t_ours, t_hf = statistics.median(times[head, "ours"]), statistics.median(times[head, "gpt2"])
            res[head] = {"ours_tokens_per_s": tokens / t_ours, "gpt2_tokens_per_s": tokens / t_hf, "ratio": t_hf / t_ours,
                         "ours_step_s": t_ours, "gpt2_step_s": t_hf, "logit_positions": positions[head, "ours"],
                         "loss_ours": losses[head, "ours"], "loss_gpt2": losses[head, "gpt2"]}
        res["ours_tokens_per_s"] = res["target_head"]["ours_tokens_per_s"]  # as our model trains
        res["ratio"] = res["full_head"]["ratio"]  # the equal-work comparison with GPT-2 as shipped
        if device.type == "cuda":  # on the full-head pass, which does every FLOP the estimate counts
            peak = args.peak_tflops or (989.0 if any(g in torch.cuda.get_device_name() for g in ("H100", "H200")) else None)
            trunk = n_ours - cfg.vocab_size * cfg.n_embd - cfg.context * cfg.n_embd
            flops_per_token = 6 * trunk + 12 * cfg.n_layer * context * cfg.n_embd
            achieved = flops_per_token * tokens / res["full_head"]["ours_step_s"]
            res["ours_tflops"] = achieved / 1e12
            if peak:
                res["ours_mfu"] = achieved / (peak * 1e12)
        results[kind] = res
        full, tgt = res["full_head"], res["target_head"]
        print(f"{kind:>9} (targets {res['target_fraction']:.1%} of tokens, {res['patches']} patches)"
              + (f", MFU {res['ours_mfu']:.1%}" if "ours_mfu" in res else "") + "\n"
              f"  full head, logits at all {full['logit_positions']} positions (equal work): ours "
              f"{full['ours_tokens_per_s']:,.0f} tok/s, GPT-2 {full['gpt2_tokens_per_s']:,.0f} tok/s, ratio {full['ratio']:.2f}\n"
              f"  target head, logits at the {tgt['logit_positions']} target positions: ours as trained "
              f"{tgt['ours_tokens_per_s']:,.0f} tok/s, GPT-2 {tgt['gpt2_tokens_per_s']:,.0f} tok/s, ratio {tgt['ratio']:.2f} "
              f"(GPT-2 still runs its last block everywhere)")
    ratio_full = min(r["full_head"]["ratio"] for r in results.values())
    ratio_target = min(r["target_head"]["ratio"] for r in results.values())
    summary = {
        "bench": "train",
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": str(amp or torch.float32),
        "preset": args.preset,
        "context": context,
        "batch_size": args.batch_size,
        "params_ours": n_ours,
        "params_gpt2": n_hf,
        "results": results,
        "min_ratio": ratio_full,
        "min_ratio_target_head": ratio_target,
        "targets": [
            {"figure": "train tok/s vs GPT-2, full head (equal work), min of kinds", "value": ratio_full,
             "target": ">= 1", "met": ratio_full >= 1},
            {"figure": "train tok/s vs GPT-2, target-only head both sides, min of kinds", "value": ratio_target,
             "target": None, "met": None},
        ],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    import tyro  # here only: the device check imports main() where tyro is not installed

    main(tyro.cli(Args, default=QUICK if "--quick" in sys.argv[1:] else None))
