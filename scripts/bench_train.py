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

On CUDA (bf16 autocast) it also prints model FLOPs utilisation (nanoGPT's
estimate: 6 N + 12 L S D FLOPs per token, against the GPU's dense bf16 peak).

    python scripts/bench_train.py                       # cpu-small, both batch kinds, float32
    python scripts/bench_train.py --dtype bfloat16      # both models under bf16 autocast
    python scripts/bench_train.py --preset gato-79m --batch-size 8 --device cuda

Needs ``transformers`` (the ``bench`` extra). Ends with one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see omnipolicy/agent/__init__.py
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

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


def gpt2_like(cfg, vocab_size: int, context: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=vocab_size, n_positions=context, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
        n_inner=cfg.d_ff, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel._from_config(hf_cfg, attn_implementation="sdpa")


def step_fn(model, opt, batch, ours: bool, autocast):
    if ours:
        def step():
            with autocast():
                loss_sum, count = model.loss_terms(batch)
                loss = loss_sum / count
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss
    else:
        labels = torch.where(batch["loss_mask"], batch["tokens"], torch.full_like(batch["tokens"], -100))

        def step():
            with autocast():
                loss = model(input_ids=batch["tokens"], labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss
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
        steps = [step_fn(ours, opts[0], batch, True, autocast), step_fn(hf, opts[1], batch, False, autocast)]
        times: list[list[float]] = [[], []]
        losses = [0.0, 0.0]
        for i in range(args.warmup + args.steps):
            for j, step in enumerate(steps):  # interleaved: both see the same machine load
                sync()
                t0 = time.perf_counter()
                losses[j] = float(step())
                sync()
                if i >= args.warmup:
                    times[j].append(time.perf_counter() - t0)
        tokens = args.batch_size * context
        t_ours, t_hf = statistics.median(times[0]), statistics.median(times[1])
        res = {
            "ours_tokens_per_s": tokens / t_ours,
            "gpt2_tokens_per_s": tokens / t_hf,
            "ratio": t_hf / t_ours,
            "ours_step_s": t_ours,
            "gpt2_step_s": t_hf,
            "target_fraction": float(batch["loss_mask"].float().mean()),
            "patches": int(batch["patches"].shape[0]),
            "loss_ours": losses[0],
            "loss_gpt2": losses[1],
        }
        if device.type == "cuda":
            peak = args.peak_tflops or (989.0 if any(g in torch.cuda.get_device_name() for g in ("H100", "H200")) else None)
            trunk = n_ours - cfg.vocab_size * cfg.n_embd - cfg.context * cfg.n_embd
            flops_per_token = 6 * trunk + 12 * cfg.n_layer * context * cfg.n_embd
            achieved = flops_per_token * tokens / t_ours
            res["ours_tflops"] = achieved / 1e12
            if peak:
                res["ours_mfu"] = achieved / (peak * 1e12)
        results[kind] = res
        print(f"{kind:>9}: ours {res['ours_tokens_per_s']:,.0f} tok/s, GPT-2 {res['gpt2_tokens_per_s']:,.0f} tok/s, "
              f"ratio {res['ratio']:.2f} (targets {res['target_fraction']:.1%} of tokens, {res['patches']} patches)"
              + (f", MFU {res['ours_mfu']:.1%}" if "ours_mfu" in res else ""))
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
        "min_ratio": min(r["ratio"] for r in results.values()),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    import tyro  # here only: the device check imports main() where tyro is not installed

    main(tyro.cli(Args))
