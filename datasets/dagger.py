"""DAgger rounds: run a trained policy and record the expert's action in every state it visits.

DAgger (Ross, Gordon and Bagnell, 2011). Behaviour cloning learns from the
states the expert visits; a learned policy's small errors take it to states no
demonstration shows, and its errors compound there (a swing-up that arrives
at the top too fast and never learned the catch; a pendulum that falls past
the angles the expert ever let it reach). A DAgger round runs the policy, asks
the task's scripted expert what it would do in each state the policy reached,
and stores those (observation, expert action) pairs as episodes; training on
the demonstrations plus the rounds teaches recoveries from the policy's own
mistakes. The scripted experts here read the simulator's state, so they can
label any state. Where a task names a teacher (``make_teacher``: the Atari
trackers), the teacher labels, as it demonstrated.

    omnipolicy dagger --checkpoint runs/train --task dmc/cartpole-swingup --episodes 10 --out data/dagger

Each task goes to ``OUT/<task id>`` (a LeRobot v3 dataset, like ``collect``),
episode ``k`` of a round is reset with the next seed from ``--seed`` on that the
store does not hold yet, so a second round (or a rerun) adds new episodes. The
stored actions are the expert's; the stored rewards and success are what the
environment gave for the policy's actions, so a round's summary is also a
quick score of the checkpoint.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np
from tqdm import tqdm

from omnipolicy.envs import get_task, make_env, make_teacher
from omnipolicy.envs.rollout import ScriptedActor, run_episodes
from omnipolicy.envs.workers import actor_recipe, init_actor_worker, worker_actor

from .collect import task_path, task_store, to_episode
from .episode import Episode
from .store import EpisodeStore

DEFAULT_SEED = 70_000
"""First reset seed of a round: away from collection (0+), evaluation (10 000+) and action-error (50 000+) seeds."""


def policy_episodes(actor: Any, task_id: str, seeds: Sequence[int], max_steps: int | None = None,
                    expert_share: float = 0.0, chosen: list[list[Any]] | None = None) -> list[Episode]:
    """Run ``actor`` in one environment per seed, side by side; label every visited state with the expert's action.

    Args:
        actor: an :class:`~omnipolicy.envs.rollout.Actor` (e.g. ``PolicyActor``).
        task_id: registered task id.
        seeds: reset seed of each episode.
        max_steps: cap on episode length (default and upper bound: the task's ``max_steps``).
        expert_share: probability that a step executes the expert's action instead of the actor's.
        chosen: if given, an empty list that receives, per episode, the actions the actor chose (executed or not),
            e.g. to compare them with the expert's labels (``scripts/action_error.py``).

    Returns:
        One :class:`Episode` per seed: the observations the actor met, the expert's actions, the rewards the
        executed actions earned.
    """
    if not 0.0 <= expert_share <= 1.0:
        raise ValueError(f"expert_share must be in [0, 1], got {expert_share}")
    if len(seeds) == 0:
        return []
    task = get_task(task_id)
    envs = [make_env(task_id) for _ in seeds]
    teacher = ScriptedActor([make_teacher(task_id, seed=int(s)) for s in seeds])
    execute = None
    if expert_share > 0:
        rng = np.random.default_rng([int(seeds[0]), 0xDA66E2])
        execute = lambda action, label: label if rng.random() < expert_share else action  # noqa: E731
    try:
        done = run_episodes(actor, task, envs, seeds, limit=max_steps, record=True, teacher=teacher, execute=execute)
    finally:
        for env in envs:
            env.close()
    if chosen is not None:
        chosen.extend(d.chosen for d in done)
    return [to_episode(task, d) for d in done]


def _worker_episodes(task_id: str, seeds: list[int], max_steps: int | None, expert_share: float) -> list[Episode]:
    return policy_episodes(worker_actor(), task_id, seeds, max_steps, expert_share)


def _free_seeds(store: EpisodeStore, task_id: str, start: int, count: int) -> list[int]:
    taken = store.seeds(task_id) if store.num_episodes else set()
    seeds, s = [], int(start)
    while len(seeds) < count:
        if s not in taken:
            seeds.append(s)
        s += 1
    return seeds


def _check_round_args(actor: Any, task_ids: Sequence[str], episodes: int | Mapping[str, int],
                      max_steps: int | Mapping[str, int | None] | None, expert_share: float,
                      workers: int, num_envs: int | None) -> tuple[dict[str, int], dict[str, int | None]]:
    """Validate :func:`dagger_round`'s arguments; returns each task's episode count and episode length cap."""
    known = getattr(actor, "tasks", None)
    counts = {t: int(episodes.get(t, 0) if isinstance(episodes, Mapping) else episodes) for t in task_ids}
    caps = {t: max_steps.get(t) if isinstance(max_steps, Mapping) else max_steps for t in task_ids}
    if not task_ids:
        raise ValueError("dagger needs at least one task id")
    can_act = getattr(actor, "can_act", lambda t: t in known)  # a policy also acts in variants of its tasks
    unknown = [] if known is None else sorted(t for t in set(task_ids) if not can_act(t))
    if unknown:
        raise ValueError(f"the {getattr(actor, 'name', 'actor')} was not trained on {unknown}; it knows {sorted(known)}")
    if any(c < 0 for c in counts.values()):
        raise ValueError(f"episodes must be >= 0 per task, got {counts}")
    if any(c is not None and c < 1 for c in caps.values()):
        raise ValueError(f"max_steps must be >= 1 (or None for the task's limit), got {caps}")
    if not 0.0 <= expert_share <= 1.0:
        raise ValueError(f"expert_share must be in [0, 1], got {expert_share}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if num_envs is not None and num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    return counts, caps


def _run_jobs(actor: Any, recipe: Any, jobs: list[tuple[str, list[int]]], caps: dict[str, int | None],
              expert_share: float, workers: int, keep: Callable[[str, list[Episode]], None]) -> None:
    """Run each job's seeds side by side (in this process, or in worker processes); ``keep`` takes each result."""
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        for t, seeds in jobs:
            keep(t, policy_episodes(actor, t, seeds, caps[t], expert_share))
    elif jobs:
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_actor_worker,
                                 initargs=(recipe, threads, os.getpid())) as pool:
            # the longest tasks first, so no worker is left with one long task at the end
            order = sorted(jobs, key=lambda job: -len(job[1]) * _limit(job[0], caps[job[0]]))
            futures = {pool.submit(_worker_episodes, t, seeds, caps[t], expert_share): t for t, seeds in order}
            for fut in as_completed(futures):
                keep(futures[fut], fut.result())


def _round_summary(task_ids: Sequence[str], out: str | os.PathLike, stores: dict[str, EpisodeStore],
                   added: dict[str, list[Episode]]) -> dict[str, dict[str, Any]]:
    """:func:`dagger_round`'s return value."""
    summary = {}
    for t in task_ids:
        eps = added.get(t, [])
        succ = [e.success for e in eps if e.success is not None]
        summary[t] = {
            "path": str(task_path(out, t)),
            "episodes": stores[t].num_episodes if t in stores else 0,
            "new": len(eps),
            "steps": int(sum(len(e.actions) for e in eps)),
            "policy_return": float(np.mean([e.rewards.sum() for e in eps])) if eps else float("nan"),
            "policy_success_rate": float(np.mean(succ)) if succ else None,
        }
    return summary


def dagger_round(
    actor: Any,
    task_ids: Sequence[str],
    episodes: int | Mapping[str, int],
    out: str | os.PathLike,
    max_steps: int | Mapping[str, int | None] | None = None,
    expert_share: float = 0.0,
    seed: int = DEFAULT_SEED,
    workers: int = 1,
    progress: bool = True,
    num_envs: int | None = None,
) -> dict[str, dict[str, Any]]:
    """One DAgger round: run the actor in each task and append the expert-labelled episodes to ``out``.

    Args:
        actor: an evaluation actor (``begin``, ``reset_env``, ``act``), e.g.
            ``omnipolicy.agent.PolicyActor.from_checkpoint(...)``; with ``workers > 1`` it needs a ``recipe``
            (a picklable callable that builds it again in each worker process). An actor with ``tasks``
            (the task ids it was trained on) is checked against ``task_ids``.
        task_ids: registered task ids the actor knows.
        episodes: episodes to add per task (one number, or one per task id; 0 skips a task).
        out: output folder; task ``t`` goes to ``task_path(out, t)``.
        max_steps: cap on episode length, one value or per task id (None: the task's own limit).
        expert_share: probability that a step executes the expert's action (DAgger's beta).
        seed: first reset seed; seeds the task's store already holds are skipped.
        workers: processes that run batches side by side (1: in this process).
        progress: show a tqdm bar.
        num_envs: environments a batch runs side by side through the actor; each batch is stored when it ends
            (memory stays bounded by one batch per worker, and an interrupted round keeps the batches done).
            None: all of a task's episodes in one batch (fastest where memory allows: state observations).

    Returns:
        task id -> ``{"path", "episodes", "new", "steps", "policy_return", "policy_success_rate"}``: the store's
        episode count after the round, what this round added, and the policy's mean return and success rate
        in the round's episodes.

    Raises:
        ValueError: bad arguments, or a task the actor was not trained on.
    """
    counts, caps = _check_round_args(actor, task_ids, episodes, max_steps, expert_share, workers, num_envs)
    recipe = actor_recipe(actor, f"dagger_round(workers={workers})") if workers > 1 else None
    stores = {t: task_store(out, t) for t in task_ids if counts[t] > 0}
    jobs = []
    for t, store in stores.items():
        store.recover()
        seeds = _free_seeds(store, t, seed, counts[t])
        size = num_envs or len(seeds)
        jobs += [(t, seeds[i:i + size]) for i in range(0, len(seeds), size)]
    added: dict[str, list[Episode]] = {}
    bar = tqdm(total=sum(len(s) for _, s in jobs), desc="dagger", unit="ep", disable=not progress,
               dynamic_ncols=True)

    def keep(task_id: str, eps: list[Episode]) -> None:
        stores[task_id].append_episodes(eps)  # one crash-safe commit per batch
        added.setdefault(task_id, []).extend(eps)
        bar.set_postfix_str(task_id)
        bar.update(len(eps))

    try:
        _run_jobs(actor, recipe, jobs, caps, expert_share, workers, keep)
    finally:
        bar.close()
        for store in stores.values():
            store.close()
    return _round_summary(task_ids, out, stores, added)


def _limit(task_id: str, cap: int | None) -> int:
    task = get_task(task_id)
    return task.max_steps if cap is None else min(cap, task.max_steps)
