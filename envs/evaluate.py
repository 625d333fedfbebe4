"""The shared evaluation protocol: rollouts, expert-normalised scores, a report.

One protocol for every actor (a trained checkpoint, a scripted expert, the
uniform-random policy), so numbers are comparable across runs and projects:

* each task runs ``episodes`` episodes in ``num_envs`` parallel environments,
  batched through the actor; episode ``k`` of a task is reset with seed
  ``seed + k`` (evaluation seeds start at 10 000, away from collection seeds);
* the simulator settings and the episode limit are the task's own, the ones
  its random and expert scores were measured under (``registry.score_protocol``;
  Atari's, ``envs.atari.PROTOCOL``: sticky actions, no-op starts, a 2000-step
  cap); a run capped below a task's limit (``max_steps``), or scores recorded
  under another protocol, mark the task's normalised score not comparable;
* score 0 = the task's random score, 100 = its expert score (Gato's definition),
  95% confidence intervals by a seeded bootstrap over episodes;
* Gato's headline metric: the share of tasks at or above 50% of expert.

The protocol is written into every report. The episodes run in :func:`omnipolicy.envs.rollout.run_episodes`,
the scores are :mod:`omnipolicy.envs.scores`, the report :mod:`omnipolicy.envs.report`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from .atari import PROTOCOL as ATARI_PROTOCOL
from .registry import TaskSpec, get_task, make_env, protocol_mismatch
from .report import FrameSampler, write_gif, write_report
from .rollout import Actor, run_episodes
from .scores import BOOTSTRAP_SAMPLES, TaskResult, summarize
from .workers import actor_recipe, init_actor_worker, worker_actor


def episode_limit(task: TaskSpec, max_steps: int | None) -> int:
    """Steps an evaluation episode may last: the task's own limit, capped at ``max_steps`` when given."""
    return min(max_steps or task.max_steps, task.max_steps)


def not_comparable(task: TaskSpec, limit: int) -> str | None:
    """Why episodes of at most ``limit`` steps are not scored under the task's protocol, or None if they are.

    The random and expert scores hold for the task's :func:`~omnipolicy.envs.registry.score_protocol`: episodes of
    ``task.max_steps`` steps and the simulator settings recorded with the scores.
    """
    if limit < task.max_steps:
        return (f"episodes capped at {limit} steps, below the {task.max_steps} its random and expert scores "
                f"were measured at")
    stale = protocol_mismatch(task)
    if stale:
        return f"its scores were measured under another protocol ({stale}) than the task's now"
    return None


def run_task(
    actor: Actor,
    task_id: str,
    episodes: int,
    num_envs: int = 8,
    seed: int = 10_000,
    video_path: Path | None = None,
    max_steps: int | None = None,
    progress=None,
) -> TaskResult:
    """Roll ``episodes`` episodes of one task in parallel environments.

    Args:
        actor: what chooses actions.
        task_id: registered task id.
        episodes: number of episodes; episode ``k`` is reset with ``seed + k``.
        num_envs: parallel environments batched through the actor.
        seed: seed of episode 0.
        video_path: where to write a GIF of episode 0, or None.
        max_steps: cap on episode length (default: the task's ``max_steps``); below it, the result is marked
            ``not_comparable`` (the random and expert scores hold for full-limit episodes).
        progress: optional tqdm bar, advanced by one per finished episode.

    Returns:
        The task's :class:`TaskResult`.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    task = get_task(task_id)
    limit = episode_limit(task, max_steps)
    num_envs = max(1, min(num_envs, episodes))
    envs = [make_env(task_id, render_mode="rgb_array" if (i == 0 and video_path) else None) for i in range(num_envs)]
    frames = FrameSampler()

    def film(env_index: int, episode: int) -> None:  # episode 0 runs in environment 0
        if episode == 0:
            frames.offer(envs[0].render)

    start = time.perf_counter()
    try:
        rollouts = run_episodes(actor, task, envs, [seed + k for k in range(episodes)], limit=limit,
                                on_step=film if video_path else None, progress=progress)
    finally:
        for env in envs:
            env.close()
    video = None
    if video_path and frames.frames:
        video = str(write_gif(frames.frames, video_path, frame_step=frames.stride))
    return TaskResult(
        task_id=task.id,
        domain=task.domain,
        returns=[r.ret for r in rollouts],
        successes=[bool(r.success) for r in rollouts] if task.has_success else None,
        lengths=[r.length for r in rollouts],
        random_score=float(task.random_score),
        expert_score=float(task.expert_score),
        seconds=time.perf_counter() - start,
        video=video,
        episode_limit=limit,
        not_comparable=not_comparable(task, limit),
        labels=[r.labels for r in rollouts],
        flags=[r.flags for r in rollouts],
    )


def evaluate(
    actor: Actor,
    task_ids: Sequence[str],
    episodes: int,
    out: Path,
    num_envs: int = 8,
    seed: int = 10_000,
    video: bool = True,
    max_steps: int | None = None,
    title: str = "omnipolicy evaluation",
    extra_protocol: dict | None = None,
    workers: int = 1,
) -> dict:
    """Run the protocol over ``task_ids`` and write the report into ``out``.

    Args:
        workers: processes that evaluate tasks side by side, each with its own copy of the actor (rebuilt
            from ``actor.recipe``) and ``cpu_count // workers`` torch threads. Every episode's seed is fixed by
            its task and index, so the scores do not depend on it, except that another thread count can round a
            policy's matrix products differently and flip a near-tie between two action bins (the demo's 23
            tasks: mean 46.06 with 2 workers, 46.10 in one process). 1 runs everything in this process.

    Returns:
        The summary dict (also written to ``out/report.json``).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    paths = {t: out / "videos" / f"{t.replace('/', '__')}.gif" if video else None for t in task_ids}
    workers = max(1, min(workers, len(task_ids)))  # never more processes than tasks
    with tqdm(total=episodes * len(task_ids), desc=f"eval {actor.name}", unit="ep") as bar:
        if workers == 1:
            results = []
            for tid in task_ids:
                bar.set_postfix_str(tid)
                results.append(run_task(actor, tid, episodes, num_envs, seed, paths[tid], max_steps, progress=bar))
        else:
            results = _run_tasks_in_workers(actor, task_ids, workers, bar, episodes=episodes, num_envs=num_envs,
                                            seed=seed, video_paths=paths, max_steps=max_steps)
    protocol = {
        "actor": actor.name,
        "episodes_per_task": episodes,
        "parallel_envs": max(1, min(num_envs, episodes)),  # what ran: never more envs than episodes
        "worker_processes": workers,
        "seeds": f"episode k of a task resets with seed {seed} + k",
        "episode_limit": "each task's max_steps, the limit its random and expert scores were measured at"
                         + (f"; capped at {max_steps} (tasks with a longer limit are marked not comparable)"
                            if max_steps else ""),
        "atari": ATARI_PROTOCOL + "; the random and expert scores are measured under the same protocol",
        "prompting": "none",
        "normalisation": "100 * (return - random) / (expert - random); random and expert measured by "
                         "scripts/measure_experts.py under each task's protocol (registry.score_protocol)",
        "confidence_intervals": f"95% percentile bootstrap over episodes, {BOOTSTRAP_SAMPLES} resamples, seed 0",
        "out": str(out),
    }
    protocol.update(extra_protocol or {})
    summary = summarize(results, protocol)
    write_report(summary, out, title)
    return summary


def _run_task_in_worker(task_id: str, episodes: int, num_envs: int, seed: int, video_path: Path | None,
                        max_steps: int | None) -> TaskResult:
    return run_task(worker_actor(), task_id, episodes, num_envs, seed, video_path, max_steps)


def _run_tasks_in_workers(actor: Actor, task_ids: Sequence[str], workers: int, bar, *, episodes: int, num_envs: int,
                          seed: int, video_paths: dict[str, Path | None], max_steps: int | None) -> list[TaskResult]:
    """:func:`run_task` for every task in ``workers`` processes; results in ``task_ids`` order."""
    recipe = actor_recipe(actor, f"evaluate(workers={workers})")
    # the longest tasks first, so no worker is left with a long one at the end
    order = sorted(task_ids, key=lambda t: -episode_limit(get_task(t), max_steps))
    threads = max(1, (os.cpu_count() or 1) // workers)
    done: dict[str, TaskResult] = {}
    ctx = mp.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_actor_worker,
                             initargs=(recipe, threads, os.getpid())) as pool:
        pending = {pool.submit(_run_task_in_worker, t, episodes, num_envs, seed, video_paths[t], max_steps): t
                   for t in order}
        bar.set_postfix_str(f"{workers} workers")
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                done[pending.pop(fut)] = fut.result()
                bar.update(episodes)
    return [done[t] for t in task_ids]
