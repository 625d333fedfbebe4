"""Collection overhead: env steps/s while collecting (record, encode, write crash-safely) vs the bare loop.

Both run in this process on the same seeds with the same demonstrator (the task's teacher, ``make_teacher``, as
``collect`` uses): the bare loop only steps the env and the demonstrator; ``collect(..., workers=0)`` also
records every observation, encodes the episode (Arrow columns, statistics, PNG for images), and commits it to a
LeRobot v3 store every ``--flush-seconds``. Each side runs twice, alternating, and the faster run counts (this
machine is shared). Optionally the same collection with worker processes shows the parallel throughput.

    .venv/bin/python scripts/bench_collect.py --tasks classic/cartpole-v1 mujoco/inverted-pendulum-v5
    target: overhead < 25% without images; ends with one JSON line.
    .venv/bin/python scripts/bench_collect.py --quick    # the profile `make bench` runs
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from omnipolicy.datasets.collect import collect
from omnipolicy.envs import get_task, make_env, make_teacher


@dataclass(frozen=True)
class Args:
    tasks: tuple[str, ...] = ("classic/cartpole-v1", "mujoco/inverted-pendulum-v5", "dmc/cartpole-swingup")
    """Tasks to measure (state observations: the target applies without images)."""
    seconds: float = 4.0
    """Approximate seconds of stepping per measurement (sets the number of episodes)."""
    workers: int = 2
    """Also measure collection with this many worker processes (0: skip)."""
    flush_seconds: float = 2.0
    """Commit interval of the collection (the CLI's default)."""
    rounds: int = 3
    """Alternating bare/collect rounds; the best of each counts."""
    quick: bool = False
    """The quick profile of `make bench` (about 1.5 s per measurement, 2 rounds, no worker run); flags given with it
    still apply."""


QUICK = Args(seconds=1.5, rounds=2, workers=0, quick=True)


def bare_loop(task_id: str, seeds: range) -> tuple[int, float, float]:
    """Env + demonstrator only; returns (steps, wall seconds, CPU seconds) excluding construction."""
    task = get_task(task_id)
    env, teacher = make_env(task_id, seed=seeds.start), make_teacher(task_id, seed=seeds.start)
    steps, t0, c0 = 0, time.perf_counter(), time.process_time()
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        teacher.reset(env, obs)
        for _ in range(task.max_steps):
            obs, _, terminated, truncated, _ = env.step(teacher.act(env, obs))
            steps += 1
            if terminated or truncated:
                break
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    env.close()
    return steps, seconds, cpu


def collect_run(task_id: str, episodes: int, seed: int, workers: int, flush: float) -> tuple[int, float, float, int]:
    """A fresh collection into a temporary folder; returns (steps, wall s, CPU s of this process, bytes written)."""
    out = Path(tempfile.mkdtemp(prefix="bench_collect_"))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        summary = collect([task_id], episodes, out, workers=workers, seed=seed, flush_seconds=flush, progress=False)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        return summary[task_id]["steps"], seconds, cpu, size
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(args: Args) -> dict:
    results = {}
    for task_id in args.tasks:
        # warm up (imports, env construction, the in-process worker cache) and size the run
        steps, sec, _ = bare_loop(task_id, range(1000, 1002))
        collect_run(task_id, 1, 2000, 0, args.flush_seconds)
        rate, per_episode = steps / max(sec, 1e-9), steps / 2
        episodes = max(4, int(args.seconds * rate / per_episode))
        seeds = range(0, episodes)
        bare, coll, bare_cpu, coll_cpu = [], [], [], []
        for _ in range(args.rounds):  # alternate, keep the best of each (the machine is shared)
            s, t, c = bare_loop(task_id, seeds)
            bare.append(s / t)
            bare_cpu.append(s / c)
            s2, t2, c2, size = collect_run(task_id, episodes, 0, 0, args.flush_seconds)
            assert s2 == s, f"{task_id}: collection stepped {s2} times, the bare loop {s}"
            coll.append(s2 / t2)
            coll_cpu.append(s2 / c2)
        row = {
            "episodes": episodes,
            "steps": s,
            "bare_steps_per_s": round(max(bare), 1),
            "collect_steps_per_s": round(max(coll), 1),
            "overhead": round(1 - max(coll) / max(bare), 4),
            "overhead_cpu_time": round(1 - max(coll_cpu) / max(bare_cpu), 4),
            "bytes_per_step": round(size / s, 1),
        }
        if args.workers:
            s3, t3, _, _ = collect_run(task_id, episodes, 0, args.workers, args.flush_seconds)
            row[f"collect_{args.workers}_workers_steps_per_s"] = round(s3 / t3, 1)
        results[task_id] = row
        print(f"{task_id:<32} bare {row['bare_steps_per_s']:>9.0f} steps/s   collect {row['collect_steps_per_s']:>9.0f} "
              f"steps/s   overhead {100 * row['overhead']:5.1f}% (CPU time {100 * row['overhead_cpu_time']:.1f}%)   ({episodes} episodes, {s} steps, "
              f"{row['bytes_per_step']:.0f} B/step)" + (f"   {args.workers} workers {row[f'collect_{args.workers}_workers_steps_per_s']:.0f} steps/s" if args.workers else ""))
    worst = max(r["overhead"] for r in results.values())
    summary = {"bench": "collect", "tasks": results, "max_overhead": worst, "target_overhead": 0.25, "meets_target": worst < 0.25,
               "targets": [{"figure": "collection overhead vs bare loop, worst task", "value": worst, "target": "< 0.25",
                            "met": worst < 0.25}]}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args, default=QUICK if "--quick" in sys.argv[1:] else None))
