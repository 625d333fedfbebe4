"""Mixture-of-experts against the dense feed-forward at equal active parameters, on the same data and steps.

Each variant trains the same preset from the same seed on the same windows (the same datasets, loader seed and
held-out episodes) for the same number of steps; only ``ModelConfig.ffn`` and its expert count differ:

- ``dense``: one MLP of width ``d_ff`` per block (the preset as it is);
- ``moe-e<E>-k1``: ``E`` experts of that shape per block, one per token (Switch's top-1 routing): each token runs
  one MLP of the dense width, so the active parameters per token are the dense model's plus the routers' ``E x D``
  per block, while the total grows with ``E``;
- ``moe-e<E>-k2`` with ``--top-k 2``: two experts per token (Mixtral's routing; twice the dense feed-forward
  per token), for reference.

Figures per variant: parameters (total, active per token), the final training loss (mean of the last tenth of
the steps), the loss on held-out episodes' action tokens (``val``) and on as many training episodes' windows
(``fit``), both means over the tasks, and training tokens per second. Without ``--data`` the script collects
``--episodes`` expert episodes of each of the four classic-control tasks (cartpole, pendulum, acrobot,
mountain car) into ``OUT/data`` first (seconds; a rerun reuses them).

Usage: ``.venv/bin/python scripts/bench_moe.py [--steps 300] [--experts 4 8] [--top-k 1]``. The last line of
output is one JSON object with every figure; a markdown table precedes it.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from omnipolicy.agent import TrainConfig, train
from omnipolicy.datasets.collect import collect, task_path
from omnipolicy.tokenizers import Tokenizer

CLASSIC = ("classic/cartpole-v1", "classic/pendulum-v1", "classic/acrobot-v1", "classic/mountaincar-v0")


@dataclass(frozen=True)
class Args:
    """Compare dense and mixture-of-experts feed-forwards on the same data and steps."""

    data: tuple[Path, ...] = ()
    """Datasets to train on (default: collect the classic-control tasks into OUT/data)."""
    out: Path = Path("runs/bench_moe")
    """Run directories (one per variant) and the collected data."""
    episodes: int = 10
    """Episodes per classic task when collecting."""
    preset: str = "cpu-tiny"
    """Model preset of every variant."""
    context: int = 128
    """Context window in tokens."""
    steps: int = 300
    """Optimizer steps per variant."""
    batch_size: int = 16
    """Windows per step."""
    lr: float = 1e-3
    """Peak learning rate (warm-up: a tenth of the steps, then cosine)."""
    experts: tuple[int, ...] = (4, 8)
    """Expert counts of the MoE variants."""
    top_k: tuple[int, ...] = (1,)
    """Experts per token of the MoE variants (1: equal active parameters with the dense model)."""
    val_fraction: float = 0.2
    """Share of each task's episodes held out for the validation loss."""
    seed: int = 0
    """Seed of the initialisation, the data order and the held-out episodes."""
    threads: int = 2
    """torch CPU threads."""


def variants(args: Args) -> dict[str, dict]:
    """Variant name -> its TrainConfig overrides of the feed-forward."""
    out = {"dense": {}}
    for k in args.top_k:
        for e in args.experts:
            if k <= e:
                out[f"moe-e{e}-k{k}"] = dict(ffn="moe", moe_experts=e, moe_top_k=k)
    return out


def run(args: Args) -> dict:
    """Train every variant and return the figures (also printed: a markdown table, then one JSON line)."""
    data = args.data
    if not data:
        collect(CLASSIC, args.episodes, args.out / "data", workers=0, progress=False)
        data = tuple(task_path(args.out / "data", t) for t in CLASSIC)
    layout = Tokenizer.default().layout
    rows = {}
    for name, ffn in variants(args).items():
        cfg = TrainConfig(data=data, out=args.out / name, preset=args.preset, context=args.context, steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, warmup_steps=max(1, args.steps // 10),
                          val_fraction=args.val_fraction, val_every=args.steps, save_every=args.steps,
                          seed=args.seed, threads=args.threads, progress=False, tensorboard=False, dtype="float32",
                          **ffn)
        model_cfg = cfg.model_config(layout)
        result = train(cfg)
        tail = result.losses[-max(1, args.steps // 10):]
        rows[name] = {
            "params_total": model_cfg.num_params(), "params_active": model_cfg.num_active_params(),
            "train_loss": float(np.mean(tail)), "val_loss": float(np.mean(list(result.val_loss.values()))),
            "fit_loss": float(np.mean(list(result.fit_loss.values()))), "tokens_per_s": result.tokens_per_s,
            "val_loss_per_task": result.val_loss,
        }
        print(f"{name}: {rows[name]}", file=sys.stderr)
    res = {"preset": args.preset, "context": args.context, "steps": args.steps, "batch_size": args.batch_size,
           "seed": args.seed, "threads": args.threads, "datasets": [str(p) for p in data],
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "variants": rows}
    print(table(res))
    print(json.dumps(res))
    return res


def table(res: dict) -> str:
    """The figures as a markdown table."""
    lines = ["| variant | params total | params active | train loss | val loss | fit loss | tokens/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in res["variants"].items():
        lines.append(f"| {name} | {r['params_total']:,d} | {r['params_active']:,d} | {r['train_loss']:.4f} | "
                     f"{r['val_loss']:.4f} | {r['fit_loss']:.4f} | {r['tokens_per_s']:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    run(tyro.cli(Args))
