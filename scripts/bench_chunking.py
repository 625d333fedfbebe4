"""Benchmark: inference cost per control tick of action chunking (k > 1) against one action per timestep (k = 1).

Workload: a Meta-World-shaped task (a 39-value state, an 8-token instruction, a 4-dimension bounded action:
48 observation tokens a timestep), the ``cpu-tiny`` preset at context 256 with random (seeded) weights of each
configuration, acting through :class:`~omnipolicy.agent.PolicyActor` and its KV-cached session, as
``omnipolicy eval`` and ``deploy`` do. A control tick is "one observation in, one action out": the actor
tokenizes the observation, steps the session and decodes, or, between a receding horizon's queries, only hands
out the next action of its chunk. Episodes of ``--episode-ticks`` ticks (each starts a fresh context; the
window fills and evicts on the way).

Contenders, per action-input mode (``hidden``: a chunk comes from one forward pass; ``tokens``: ``k * A``
decode steps), all in the same process and taking turns tick after tick (a shared machine loads them alike):

- ``k1``: ``action_chunk = 1``, the baseline: a query every tick.
- ``k<K>-ensemble``: temporal ensembling: a query every tick, each predicting ``K`` actions.
- ``k<K>-receding``: a query every ``K`` ticks; the other ticks run the chunk open loop.

Figures per contender: milliseconds per tick (p50, mean, p99) and model queries per tick, and the ratio of each to
the ``k1`` baseline of the same mode. The median tick of a receding horizon does not query the model, so its p50
is the bookkeeping alone; its mean (the query's cost spread over ``K`` ticks) is the figure for the compute a
control loop spends, its p99 the latency of a query tick. Weights do not change the cost, so random ones stand in
for trained checkpoints (the success of trained ones is in docs/training.md, "Action chunking").

Usage: ``.venv/bin/python scripts/bench_chunking.py [--chunk 4] [--ticks 400] [--quick]``. The last line of output
is one JSON object with every figure; its ``targets`` rows give the ratios (reported without a target).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from omnipolicy.agent import CheckpointMeta, GatoModel, Policy, PolicyActor
from omnipolicy.agent.config import get_preset
from omnipolicy.tokenizers import FieldSpec, TimestepSpec, Tokenizer

TASK = "bench/metaworld-shaped-v0"
SPEC = TimestepSpec(
    observation=(FieldSpec("state", "continuous", (39,), "float32"), FieldSpec("instruction", "text", (), "str")),
    action=FieldSpec("action", "continuous", (4,), "float32", low=(-1.0,) * 4, high=(1.0,) * 4),
)
INSTRUCTION = "Reach the goal position with the gripper."


@dataclass(frozen=True)
class Args:
    chunk: int = 4
    """k of the chunked contenders."""
    inputs: tuple[Literal["hidden", "tokens"], ...] = ("hidden", "tokens")
    """Action-input modes to measure (ModelConfig.action_inputs); each has its own k1 baseline."""
    preset: str = "cpu-tiny"
    """Model preset."""
    context: int = 256
    """Context window in tokens."""
    ticks: int = 400
    """Timed control ticks per contender."""
    episode_ticks: int = 100
    """Ticks per episode (each episode starts a fresh context)."""
    warmup_ticks: int = 8
    """Untimed ticks first."""
    threads: int = 1
    """torch CPU threads (0: torch's choice)."""
    seed: int = 0
    """Seed of the weights and the observations."""
    quick: bool = False
    """The quick profile (48 timed ticks, episodes of 24); flags given with it override it."""


QUICK = Args(ticks=48, episode_ticks=24, warmup_ticks=4, quick=True)


class _Task:
    id = TASK


def make_actor(args: Args, inputs: str, chunk: int, execution: str, tok: Tokenizer) -> PolicyActor:
    """A PolicyActor over random weights of the preset with this chunking, on the KV-cached session."""
    torch.manual_seed(args.seed)
    cfg = replace(get_preset(args.preset), context=args.context, action_inputs=inputs, action_chunk=chunk,
                  chunk_execution=execution).with_layout(tok.layout)
    policy = Policy(GatoModel(cfg).eval(), CheckpointMeta(cfg, tok.layout, {TASK: SPEC}), tok, use_session=True)
    actor = PolicyActor(policy)
    actor.begin(_Task(), [None])
    return actor


def run(args: Args) -> dict:
    """Measure every contender; print the table and the JSON line; return the figures."""
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = Tokenizer.default()
    k = args.chunk
    rng = np.random.default_rng(args.seed)
    n = args.warmup_ticks + args.ticks
    states = rng.normal(size=(n, 39)).astype(np.float32)
    machine = f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    print(f"machine: {machine}; preset {args.preset}, context {args.context}, k = {k}; {args.ticks} timed ticks, "
          f"episodes of {args.episode_ticks}")
    results = {"bench": "chunking", "machine": machine, "threads": torch.get_num_threads(),
               "loadavg_start": os.getloadavg(), "preset": args.preset, "context": args.context, "chunk": k,
               "ticks": args.ticks, "episode_ticks": args.episode_ticks, "modes": {}, "targets": []}
    for inputs in args.inputs:
        names = {"k1": (1, "ensemble"), f"k{k}-ensemble": (k, "ensemble"), f"k{k}-receding": (k, "receding")}
        actors = {name: make_actor(args, inputs, c, e, tok) for name, (c, e) in names.items()}
        calls = dict.fromkeys(actors, 0)
        times = {name: [] for name in actors}
        for name, actor in actors.items():
            inner = actor.policy.act_chunks

            def counted(*a, _name=name, _inner=inner, **kw):
                calls[_name] += 1
                return _inner(*a, **kw)

            actor.policy.act_chunks = counted
        for tick in range(n):
            obs = {"state": states[tick], "instruction": INSTRUCTION}
            if tick == args.warmup_ticks:
                calls = dict.fromkeys(actors, 0)
            for name, actor in actors.items():  # taking turns tick after tick
                if tick % args.episode_ticks == 0:
                    actor.reset_env(0, obs)
                t0 = time.perf_counter()
                actor.act([0], [obs])
                if tick >= args.warmup_ticks:
                    times[name].append(time.perf_counter() - t0)
        mode = results["modes"][inputs] = {}
        base = None
        print(f"\naction_inputs={inputs}")
        print(f"{'contender':<14} {'p50 ms/tick':>12} {'mean ms/tick':>13} {'p99 ms/tick':>12} {'queries/tick':>13} "
              f"{'p50 vs k1':>10} {'mean vs k1':>11}")
        for name, ts in times.items():
            ms = np.asarray(ts) * 1e3
            r = {"p50_ms": float(np.median(ms)), "mean_ms": float(ms.mean()), "p99_ms": float(np.percentile(ms, 99)),
                 "queries_per_tick": calls[name] / args.ticks, "n": len(ms)}
            base = base or r
            r["p50_vs_k1"] = r["p50_ms"] / base["p50_ms"]
            r["mean_vs_k1"] = r["mean_ms"] / base["mean_ms"]
            mode[name] = r
            print(f"{name:<14} {r['p50_ms']:12.3f} {r['mean_ms']:13.3f} {r['p99_ms']:12.3f} "
                  f"{r['queries_per_tick']:13.3f} {r['p50_vs_k1']:9.2f}x {r['mean_vs_k1']:10.2f}x")
            if name != "k1":
                for stat in ("p50", "mean"):
                    results["targets"].append({"figure": f"{inputs} {name} {stat} ms/tick vs k1",
                                               "value": r[f"{stat}_vs_k1"], "target": None, "met": None})
    results["loadavg_end"] = os.getloadavg()
    print(json.dumps(results, sort_keys=True))
    return results


def main(argv: list[str] | None = None) -> None:
    import tyro

    argv = sys.argv[1:] if argv is None else argv
    run(tyro.cli(Args, args=argv, default=QUICK if "--quick" in argv else None))


if __name__ == "__main__":
    main()
