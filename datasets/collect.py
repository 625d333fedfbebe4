"""``omnipolicy collect``: roll out the scripted experts in parallel workers into episode stores.

The demonstrator of a task is its teacher (``make_teacher``): the scripted expert, except where the task names
an imitable teacher instead (the Atari games' trackers, ``envs/experts/atari.py``).

Each task gets its own LeRobot v3 dataset at ``OUT/<task id>`` (e.g. ``OUT/metaworld/reach-v3``), because
a LeRobot dataset has a single feature schema. Episode ``j`` of a task is reset with seed ``SEED + j``;
seeds already in the store (or rejected by the filter earlier) are skipped, so a rerun of the same command
continues an interrupted or smaller collection. Workers (``multiprocessing`` forkserver processes) build the
env and the expert once, roll out episodes and encode them (PNG, statistics); the main process appends
them to the stores every ``--flush-seconds`` in one crash-safe commit per store.

    omnipolicy collect --task classic/cartpole-v1 --task metaworld/reach-v3 --episodes 100 --out data/demos
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tyro
from tqdm import tqdm

from omnipolicy.envs import get_task, make_env, make_teacher
from omnipolicy.envs.rollout import Rollout, ScriptedActor, run_episodes
from omnipolicy.envs.workers import watch_parent

from .episode import Episode, PreparedEpisode, prepare_episode
from .store import DEFAULT_FPS, EpisodeStore


@dataclass(frozen=True)
class CollectConfig:
    """Collect expert demonstrations into LeRobot v3 datasets (one folder per task under --out)."""

    task: Annotated[tuple[str, ...], tyro.conf.UseAppendAction]
    """Task id to collect (repeat the flag for several tasks), e.g. classic/cartpole-v1."""
    episodes: int
    """Episodes each task's dataset should hold (a rerun continues until it does)."""
    out: Path
    """Output folder; each task is written to OUT/<task id>."""
    workers: int = max(1, (os.cpu_count() or 1))
    """Worker processes (0: roll out in this process)."""
    seed: int = 0
    """Seed of a task's first episode; episode j uses seed + j."""
    filter_expert_fraction: float | None = None
    """Gato's filter: keep an episode only if its expert-normalised score is at least this fraction
    (return - random >= fraction * (expert - random); with random = 0 this is return >= fraction * expert)."""
    flush_seconds: float = 2.0
    """Commit finished episodes to disk this often (longer when a commit itself takes over 5% of the time)."""
    max_attempts: float = 10.0
    """Give up on a task after rolling out this many times --episodes seeds (only matters with the filter)."""
    action_noise: float = 0.0
    """DART-style noise injection (Laskey et al. 2017): the env executes the expert's action plus Gaussian noise
    of this many half-ranges (continuous, clipped to the bounds) or a random action with this probability
    (discrete); the recorded action stays the expert's. The data then shows how the expert recovers from the
    states a learner's small errors lead to. 0: plain expert rollouts."""
    max_steps: int | None = None
    """Cap on episode length (default: the task's own limit). Short episodes of a task whose expert reaches its
    goal quickly and then holds still put the reaching part, not the holding, in most of the data."""


# ----------------------------------------------------------------------------------------------------------
# Rollouts (run in workers)


def perturb(action: np.ndarray, spec: Any, noise: float, rng: np.random.Generator) -> np.ndarray:
    """The action the env executes under DART noise injection (see ``CollectConfig.action_noise``).

    Args:
        action: the expert's action.
        spec: the action's ``FieldSpec`` (continuous: half-range from ``low``/``high``, 1 when unbounded;
            discrete: ``n`` values per element).
        noise: Gaussian scale in half-ranges (continuous) or the probability of a random value (discrete).
        rng: the episode's noise generator.
    """
    a = np.asarray(action)
    if spec.kind == "discrete":
        flip = rng.random(a.shape) < noise
        return np.where(flip, rng.integers(0, spec.n, a.shape), a).astype(a.dtype)
    if spec.low is None:
        return (a + noise * rng.standard_normal(a.shape)).astype(a.dtype)
    low, high = np.reshape(spec.low, a.shape), np.reshape(spec.high, a.shape)
    return np.clip(a + noise * (high - low) / 2 * rng.standard_normal(a.shape), low, high).astype(a.dtype)


def rollout(env: Any, expert: Any, task: Any, seed: int, action_noise: float = 0.0, max_steps: int | None = None) -> Episode:
    """One expert episode: observations before each action, the action, the reward after it.

    Args:
        env: gymnasium-style env of the task (``make_env``).
        expert: the task's demonstrator (``make_teacher``: its expert unless it names a teacher).
        task: the task's ``TaskSpec``.
        seed: reset seed (also seeds the noise).
        action_noise: see ``CollectConfig.action_noise`` (the recorded actions are the expert's either way).
        max_steps: cap on the episode length (default ``task.max_steps``); a capped episode is truncated.
    """
    execute = None
    if action_noise > 0:
        noise_rng = np.random.default_rng([int(seed), 0xDA127])
        execute = lambda action, _: perturb(action, task.timestep.action, action_noise, noise_rng)  # noqa: E731
    (done,) = run_episodes(ScriptedActor([expert]), task, [env], [seed], limit=max_steps, record=True, execute=execute)
    return to_episode(task, done)


def to_episode(task: Any, done: Rollout) -> Episode:
    """A recorded :class:`~omnipolicy.envs.rollout.Rollout` (``record=True``) as a dataset episode."""
    spec = task.timestep
    # np.array stacks a list of equal-shape arrays ~3x faster than np.stack
    observations = {f.name: (done.observations[f.name] if f.kind == "text" else np.array(done.observations[f.name], dtype=f.dtype))
                    for f in spec.observation}
    return Episode(
        task_id=task.id,
        observations=observations,
        actions=np.array(done.actions, dtype=spec.action.dtype),
        rewards=np.asarray(done.rewards, dtype=np.float64),
        success=done.success,
        seed=done.seed,
        terminated=done.terminated,
        spec=spec,
        instruction=task.instruction,
    )


_WORKER_CACHE: dict[str, tuple[Any, Any, Any]] = {}


def _worker_rollout(task_id: str, seed: int, action_noise: float = 0.0,
                    max_steps: int | None = None) -> tuple[PreparedEpisode, float]:
    """Roll out and encode one episode; the env and expert are built once per worker and task."""
    if task_id not in _WORKER_CACHE:
        task = get_task(task_id)
        _WORKER_CACHE[task_id] = (task, make_env(task_id, seed=int(seed)), make_teacher(task_id, seed=int(seed)))
    task, env, expert = _WORKER_CACHE[task_id]
    t0 = time.perf_counter()
    ep = rollout(env, expert, task, seed, action_noise, max_steps)
    return prepare_episode(ep, task.timestep), time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------
# The collection loop (main process)


@dataclass
class TaskProgress:
    """Per-task bookkeeping of one collection run."""

    task: Any
    store: EpisodeStore
    target: int
    next_seed: int
    max_seed: int
    done: set[int]
    kept: int = 0
    rejected: int = 0
    flying: set[int] = field(default_factory=set)
    """Seeds handed out whose episodes have not come back."""
    steps: int = 0
    buffer: list[PreparedEpisode] | None = None
    rejected_buffer: list[int] | None = None

    @property
    def have(self) -> int:
        return self.store.num_episodes + len(self.buffer or [])

    def take_seed(self) -> int | None:
        while self.next_seed < self.max_seed and self.next_seed in self.done:
            self.next_seed += 1
        if self.next_seed >= self.max_seed or self.have + len(self.flying) >= self.target:
            return None
        seed = self.next_seed
        self.next_seed += 1
        return seed


def task_path(out: str | os.PathLike, task_id: str) -> Path:
    """Folder of one task's dataset inside a collection's output folder."""
    return Path(out).joinpath(*task_id.split("/"))


def task_store(out: str | os.PathLike, task_id: str) -> EpisodeStore:
    """One task's dataset inside a collection's output folder; a new one records the task's control rate."""
    return EpisodeStore(task_path(out, task_id), fps=get_task(task_id).fps or DEFAULT_FPS)


def _keep(task: Any, ret: float, fraction: float | None) -> bool:
    if fraction is None:
        return True
    lo, hi = float(task.random_score), float(task.expert_score)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi == lo:
        raise ValueError(
            f"--filter-expert-fraction needs measured random and expert scores for {task.id!r}, got "
            f"random={lo}, expert={hi}"
        )
    return (ret - lo) >= fraction * (hi - lo)


def _check_args(
    task_ids: Sequence[str],
    episodes: int,
    filter_expert_fraction: float | None,
    action_noise: float | Mapping[str, float],
    max_steps: int | Mapping[str, int] | None,
) -> tuple[dict[str, float], dict[str, int | None]]:
    """Validate :func:`collect`'s arguments; returns each task's action noise and episode length cap."""
    if episodes < 0:
        raise ValueError(f"episodes must be >= 0, got {episodes}")
    caps = {t: max_steps.get(t) if isinstance(max_steps, Mapping) else max_steps for t in task_ids}
    bad_caps = {t: v for t, v in caps.items() if v is not None and not (isinstance(v, int) and v >= 1)}
    if bad_caps:
        raise ValueError(f"max_steps must be an int >= 1 (or None for each task's limit), got {bad_caps}")
    if filter_expert_fraction is not None and not 0.0 <= filter_expert_fraction <= 1.5:
        raise ValueError(f"filter_expert_fraction must be in [0, 1.5], got {filter_expert_fraction}")
    if not task_ids:
        raise ValueError("collect needs at least one task id")
    noise = {t: float(action_noise.get(t, 0.0) if isinstance(action_noise, Mapping) else action_noise) for t in task_ids}
    bad = {t: v for t, v in noise.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"action_noise must be in [0, 1] (half-ranges / probability), got {bad}")
    return noise, caps


def _open_tasks(task_ids: Sequence[str], episodes: int, out: str | os.PathLike, seed: int,
                filter_expert_fraction: float | None, max_attempts: float) -> dict[str, TaskProgress]:
    """Open (and recover) each task's store; the seeds it holds or rejected earlier are skipped."""
    tasks: dict[str, TaskProgress] = {}
    for tid in dict.fromkeys(task_ids):
        task = get_task(tid)
        if filter_expert_fraction is not None:
            _keep(task, 0.0, filter_expert_fraction)  # fail early on unmeasured scores
        store = task_store(out, tid)
        store.recover()
        if store.num_episodes and tid not in store.task_ids:
            raise ValueError(f"{store.root} holds other tasks {store.task_ids}, not {tid!r}")
        tasks[tid] = TaskProgress(
            task=task, store=store, target=episodes, next_seed=seed,
            max_seed=seed + max(episodes, int(math.ceil(max_attempts * episodes))),
            done=store.seeds(tid) | store.rejected_seeds(tid), buffer=[], rejected_buffer=[],
        )
    return tasks


class _CollectionRun:
    """One collection run: hands out (task, seed) jobs, takes finished episodes, commits them every flush."""

    def __init__(self, tasks: dict[str, TaskProgress], filter_expert_fraction: float | None, flush_seconds: float,
                 noise: dict[str, float], caps: dict[str, int | None], total: int, progress: bool) -> None:
        self.tasks = tasks
        self.filter_expert_fraction = filter_expert_fraction
        self.flush_seconds = flush_seconds
        self.noise, self.caps = noise, caps
        self.bar = tqdm(total=total, desc="collect", unit="ep", disable=not progress, dynamic_ncols=True)
        self.last_flush = time.monotonic()
        self.interval = flush_seconds

    def flush(self, final: bool = False) -> None:
        """Append the buffered episodes and rejected seeds to the stores (one crash-safe commit per store).

        Episodes are stored in seed order, whatever order the workers finish them in: an episode waits in the
        buffer while a lower seed of its task is still in flight (``final``: write every buffered one), so a
        dataset's episode indices, and the training and held-out episodes drawn from them, do not depend on
        scheduling.
        """
        t0 = time.monotonic()
        for tp in self.tasks.values():
            tp.buffer.sort(key=lambda p: p.seed)
            first_flying = min(tp.flying, default=None)
            ready = [p for p in tp.buffer if final or first_flying is None or p.seed < first_flying]
            if ready or tp.rejected_buffer:
                tp.store.append_episodes(ready, rejected_seeds={tp.task.id: tp.rejected_buffer})
                tp.buffer, tp.rejected_buffer = tp.buffer[len(ready):], []
        # a commit rewrites the tail data file: keep its share of the time under ~5%
        self.interval = max(self.flush_seconds, 20 * (time.monotonic() - t0))

    def flush_if_due(self) -> None:
        if time.monotonic() - self.last_flush >= self.interval:
            self.flush()
            self.last_flush = time.monotonic()

    def accept(self, prepared: PreparedEpisode) -> None:
        """Buffer a finished episode, or its seed as rejected when the filter drops it."""
        tp = self.tasks[prepared.task_id]
        tp.flying.discard(int(prepared.seed))
        tp.steps += prepared.length
        if tp.have >= tp.target:
            return  # a surplus rollout (the filter rejected fewer than expected)
        if _keep(tp.task, prepared.episode_return, self.filter_expert_fraction):
            tp.buffer.append(prepared)
            tp.kept += 1
            self.bar.update(1)
        else:
            tp.rejected_buffer.append(int(prepared.seed))
            tp.rejected += 1
        self.bar.set_postfix(kept=sum(t.kept for t in self.tasks.values()),
                             rejected=sum(t.rejected for t in self.tasks.values()))

    def next_job(self) -> tuple[str, int, float, int | None] | None:
        """Arguments of the next ``_worker_rollout`` (task id, seed, noise, cap), or None when all are handed out."""
        # the least advanced task first, so tasks progress together
        order = sorted(self.tasks.values(), key=lambda tp: (tp.have + len(tp.flying)) / max(tp.target, 1))
        for tp in order:
            s = tp.take_seed()
            if s is not None:
                tp.flying.add(s)
                return tp.task.id, s, self.noise[tp.task.id], self.caps[tp.task.id]
        return None

    def run(self, workers: int) -> None:
        """Roll out every job (in this process with 0 workers); always commits what finished and closes the stores."""
        try:
            if workers == 0:
                self._run_here()
            else:
                self._run_pool(workers)
        finally:
            self.flush(final=True)
            self.bar.close()
            for tp in self.tasks.values():
                tp.store.close()

    def _run_here(self) -> None:
        while (job := self.next_job()) is not None:
            prepared, _ = _worker_rollout(*job)
            self.accept(prepared)
            self.flush_if_due()

    def _run_pool(self, workers: int) -> None:
        ctx = mp.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=watch_parent, initargs=(os.getpid(),)) as pool:
            pending: set[Future] = set()
            while True:
                while len(pending) < 2 * workers and (job := self.next_job()) is not None:
                    pending.add(pool.submit(_worker_rollout, *job))
                if not pending:
                    break
                finished, pending = wait(pending, timeout=self.flush_seconds, return_when=FIRST_COMPLETED)
                for fut in finished:
                    self.accept(fut.result()[0])
                self.flush_if_due()


def _summary(tasks: dict[str, TaskProgress], start: dict[str, int], episodes: int) -> dict[str, dict[str, Any]]:
    """:func:`collect`'s return value; warns about each task that fell short of ``episodes``."""
    summary: dict[str, dict[str, Any]] = {}
    for tid, tp in tasks.items():
        tp.store.refresh()
        rets = tp.store.returns(tid)
        succ = [r["success"] for r in tp.store.episode_table().select(["success"]).to_pylist()] if tp.store.num_episodes else []
        succ = [s for s in succ if s is not None]
        summary[tid] = {
            "path": str(tp.store.root),
            "episodes": tp.store.num_episodes,
            "new": tp.store.num_episodes - start[tid],
            "rejected": tp.rejected,
            "steps": tp.steps,
            "mean_return": float(rets.mean()) if len(rets) else math.nan,
            "success_rate": float(np.mean(succ)) if succ else None,
        }
        if tp.store.num_episodes < episodes:
            print(
                f"warning: {tid}: only {tp.store.num_episodes}/{episodes} episodes after trying seeds up to "
                f"{tp.max_seed - 1} (the filter rejected {tp.rejected}); raise --max-attempts",
                file=sys.stderr,
            )
    return summary


def collect(
    task_ids: Sequence[str],
    episodes: int,
    out: str | os.PathLike,
    workers: int | None = None,
    seed: int = 0,
    filter_expert_fraction: float | None = None,
    flush_seconds: float = 2.0,
    max_attempts: float = 10.0,
    progress: bool = True,
    action_noise: float | Mapping[str, float] = 0.0,
    max_steps: int | Mapping[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Collect expert episodes until every task's dataset holds ``episodes`` episodes.

    Args:
        task_ids: registered task ids.
        episodes: episodes each task's dataset should hold.
        out: output folder; task ``t`` goes to ``task_path(out, t)``.
        workers: worker processes (0: in this process; None: one per CPU).
        seed: seed of episode 0; episode j uses ``seed + j``.
        filter_expert_fraction: Gato's filter on the expert-normalised score (None: keep all).
        flush_seconds: commit buffered episodes at least this often.
        max_attempts: stop a task after ``max_attempts * episodes`` seeds.
        progress: show a tqdm bar.
        action_noise: DART noise injection (``CollectConfig.action_noise``), one value or per task id (default 0).
        max_steps: cap on episode length (``CollectConfig.max_steps``), one value or per task id (None, or a task
            not in the mapping: the task's own limit).

    Returns:
        task id -> ``{"path", "episodes", "new", "rejected", "steps", "mean_return", "success_rate"}``.

    Raises:
        KeyError: an unknown task id (the message lists close matches).
        ValueError: bad arguments.
    """
    noise, caps = _check_args(task_ids, episodes, filter_expert_fraction, action_noise, max_steps)
    workers = max(1, os.cpu_count() or 1) if workers is None else int(workers)
    tasks = _open_tasks(task_ids, episodes, out, seed, filter_expert_fraction, max_attempts)
    start = {tid: tp.store.num_episodes for tid, tp in tasks.items()}
    total = sum(max(0, episodes - tp.store.num_episodes) for tp in tasks.values())
    _CollectionRun(tasks, filter_expert_fraction, flush_seconds, noise, caps, total, progress).run(workers)
    return _summary(tasks, start, episodes)


def collect_command(argv: list[str], prog: str) -> None:
    """Entry point of ``omnipolicy collect``."""
    cfg = tyro.cli(CollectConfig, args=argv, prog=prog)
    t0 = time.perf_counter()
    summary = collect(
        cfg.task, cfg.episodes, cfg.out, workers=cfg.workers, seed=cfg.seed,
        filter_expert_fraction=cfg.filter_expert_fraction, flush_seconds=cfg.flush_seconds, max_attempts=cfg.max_attempts,
        action_noise=cfg.action_noise, max_steps=cfg.max_steps,
    )
    seconds = time.perf_counter() - t0
    width = max(len(t) for t in summary)
    for tid, s in summary.items():
        succ = "" if s["success_rate"] is None else f"  success {100 * s['success_rate']:.0f}%"
        print(f"{tid:<{width}}  {s['episodes']:>6} episodes (+{s['new']}, {s['rejected']} filtered)  "
              f"mean return {s['mean_return']:.2f}{succ}  -> {s['path']}")
    steps = sum(s["steps"] for s in summary.values())
    print(json.dumps({"seconds": round(seconds, 2), "steps": steps, "steps_per_s": round(steps / max(seconds, 1e-9), 1)}))

