"""Measure every task's scripted expert and the uniform random policy; write envs/expert_scores.json.

The registry reads the random and expert scores (score 0 and 100 of the
normalisation) from that file. Episode k of a task is reset with seed
``seed + k`` for both policies. Each entry records the protocol it was
measured under (``registry.score_protocol``: the task's episode limit and, for
Atari, frameskip, sticky actions and no-op starts), the one evaluation runs.
Each (task, policy) result is merged into the JSON under a file lock as soon
as it is done, so several runs (say, the slow Atari tasks in the background
and the rest in the foreground) can write to the same file at once, and a
killed run keeps what it finished.

    python scripts/measure_experts.py --domains classic mujoco dmc --episodes 20
    python scripts/measure_experts.py --tasks atari/pong --episodes 5 --policies expert
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import tqdm
import tyro

from omnipolicy.envs.registry import DOMAINS, SCORES_PATH, get_task, list_tasks, make_env, make_expert, score_protocol
from omnipolicy.envs.rollout import Rollout, run_episode
from omnipolicy.files import write_text_atomic


@dataclass(frozen=True)
class Config:
    tasks: tuple[str, ...] = ()
    """Task ids to measure (default: every task of the chosen domains that owns its scores)."""
    domains: tuple[str, ...] = ()
    """Domains to measure when --tasks is empty (default: all)."""
    policies: tuple[str, ...] = ("expert", "random")
    """Which policies to measure: expert, random."""
    episodes: int = 20
    """Episodes per task and policy."""
    seed: int = 0
    """Seed of episode 0 (episode k uses seed + k)."""
    workers: int = 1
    """Parallel worker processes."""
    out: Path = SCORES_PATH
    """JSON file to merge the results into."""


_CACHE: dict = {}


def _episode(job: tuple[str, str, int]) -> tuple[str, str, int, Rollout]:
    task_id, policy_name, seed = job
    key = (task_id, policy_name)
    if key not in _CACHE:
        from omnipolicy.envs.experts.base import RandomPolicy

        env = make_env(task_id)
        policy = make_expert(task_id, seed=0) if policy_name == "expert" else RandomPolicy(get_task(task_id), seed=0)
        _CACHE[key] = (env, policy)
    env, policy = _CACHE[key]
    if policy_name == "random":
        policy.rng = np.random.default_rng(seed)  # each episode's random actions depend on its seed only
    return task_id, policy_name, seed, run_episode(env, policy, seed)


def summarize(results: list[Rollout], has_success: bool, command: str, seed: int, protocol: dict) -> dict:
    """The JSON entry of one (task, policy); ``protocol``: the task's score protocol the episodes ran under."""
    returns = np.array([r.ret for r in results])
    entry = {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "episodes": len(results),
        "seconds_per_episode": float(np.mean([r.seconds for r in results])),
        "mean_length": float(np.mean([r.length for r in results])),
        "success_rate": float(np.mean([bool(r.success) for r in results])) if has_success else None,
        "seeds": [seed, seed + len(results) - 1],
        "returns": [round(float(r), 4) for r in returns],
        "measured": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "protocol": protocol,
    }
    return entry


def merge(path: Path, task_id: str, policy: str, entry: dict) -> None:
    """Merge one entry into the JSON file, under an exclusive lock, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.parent, os.O_RDONLY)  # lock the folder: no stray lock file next to the JSON
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        data.setdefault(
            "about",
            "Measured mean episode returns of each task's scripted expert and of the uniform random policy; "
            "the registry's TaskSpec.random_score / expert_score come from here. Re-measure with each entry's command.",
        )
        tasks = data.setdefault("tasks", {})
        tasks.setdefault(task_id, {})[policy] = entry
        data["tasks"] = dict(sorted(tasks.items()))
        write_text_atomic(path, json.dumps(data, indent=1) + "\n")
    finally:
        os.close(lock)


def main(argv: list[str] | None = None) -> None:
    cfg = tyro.cli(Config, args=argv)
    for name in cfg.policies:
        if name not in ("expert", "random"):
            raise SystemExit(f"Unknown policy {name!r}; expected one of ['expert', 'random']")
    for d in cfg.domains:
        if d not in DOMAINS:
            raise SystemExit(f"Unknown domain {d!r}; expected one of {list(DOMAINS)}")
    if cfg.tasks:
        specs = [get_task(t) for t in cfg.tasks]
    else:
        specs = [s for s in list_tasks() if s.scores_from is None and (not cfg.domains or s.domain in cfg.domains)]
    command = "python scripts/measure_experts.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    jobs = [(s.id, p, cfg.seed + k) for s in specs for p in cfg.policies for k in range(cfg.episodes)]
    pending: dict[tuple[str, str], list[Rollout]] = {}
    rows = []
    start = time.perf_counter()
    ctx = get_context("spawn")
    with ctx.Pool(cfg.workers) if cfg.workers > 1 else _Serial() as pool:
        bar = tqdm.tqdm(total=len(jobs), desc="episodes", unit="ep", dynamic_ncols=True, mininterval=2.0)
        for task_id, policy, seed, result in pool.imap_unordered(_episode, jobs):
            bar.update(1)
            done = pending.setdefault((task_id, policy), [])
            done.append(result)
            if len(done) == cfg.episodes:
                spec = get_task(task_id)
                entry = summarize(done, spec.has_success, command, cfg.seed, score_protocol(spec))
                merge(cfg.out, task_id, policy, entry)
                rows.append((task_id, policy, entry))
                bar.set_postfix_str(f"{task_id} {policy} {entry['return_mean']:.1f}", refresh=False)
        bar.close()
    for task_id, policy, e in sorted(rows):
        succ = f" success {100 * e['success_rate']:.0f}%" if e["success_rate"] is not None else ""
        print(f"{task_id:40s} {policy:6s} {e['return_mean']:10.1f} +- {e['return_std']:8.1f}{succ}  {e['seconds_per_episode']:.2f} s/ep")
    summary = {f"{t}/{p}": round(e["return_mean"], 3) for t, p, e in sorted(rows)}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary))


class _Serial:
    """In-process stand-in for a Pool (workers=1)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for env, _ in _CACHE.values():
            env.close()
        _CACHE.clear()

    def imap_unordered(self, fn, jobs):
        return map(fn, jobs)


if __name__ == "__main__":
    main()
