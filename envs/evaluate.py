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

The protocol is written into every report.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np

from omnipolicy.envs.atari import PROTOCOL as ATARI_PROTOCOL
from omnipolicy.envs.registry import TaskSpec, get_task, make_env, make_expert, protocol_mismatch
from omnipolicy.envs.workers import actor_recipe, init_actor_worker, worker_actor
from omnipolicy.files import atomic_path, write_json_atomic, write_text_atomic

BOOTSTRAP_SAMPLES = 2000
HEADLINE_THRESHOLD = 50.0


class Actor(Protocol):
    """What the harness drives: anything that maps a batch of observations to actions."""

    name: str

    def begin(self, task: TaskSpec, envs: Sequence) -> None:
        """Called once per task, before the first reset, with the parallel envs."""

    def reset_env(self, index: int, obs: dict) -> None:
        """Environment ``index`` starts a new episode with observation ``obs``."""

    def act(self, active: Sequence[int], observations: Sequence[dict]) -> list[np.ndarray]:
        """Actions for the environments ``active`` (indices into the envs) given their observations."""


class ExpertActor:
    """The task's scripted expert (it may read simulator internals)."""

    name = "expert"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.recipe = partial(ExpertActor, seed)

    def begin(self, task: TaskSpec, envs: Sequence) -> None:
        self.envs = envs
        self.experts = [make_expert(task.id, seed=self.seed + i) for i in range(len(envs))]

    def reset_env(self, index: int, obs: dict) -> None:
        self.experts[index].reset(self.envs[index], obs)

    def act(self, active: Sequence[int], observations: Sequence[dict]) -> list[np.ndarray]:
        return [self.experts[i].act(self.envs[i], o) for i, o in zip(active, observations)]


class RandomActor:
    """Uniform random actions from the task's action space (seeded per task: the task order does not matter)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.recipe = partial(RandomActor, seed)

    def begin(self, task: TaskSpec, envs: Sequence) -> None:
        self.rng = np.random.default_rng([self.seed, zlib.crc32(task.id.encode())])
        self.action = task.timestep.action

    def reset_env(self, index: int, obs: dict) -> None:
        pass

    def act(self, active: Sequence[int], observations: Sequence[dict]) -> list[np.ndarray]:
        a = self.action
        if a.kind == "discrete":
            return [self.rng.integers(0, a.n, size=a.shape).astype(a.dtype) for _ in active]
        low, high = np.asarray(a.low).reshape(a.shape), np.asarray(a.high).reshape(a.shape)
        return [self.rng.uniform(low, high).astype(a.dtype) for _ in active]


@dataclass
class TaskResult:
    """Every episode of one task under the protocol.

    ``not_comparable`` says why the episodes ran under another protocol than the random and expert scores
    (None when they did not): their normalised score is then not comparable with the protocol's.
    """

    task_id: str
    domain: str
    returns: list[float]
    successes: list[bool] | None
    lengths: list[int]
    random_score: float
    expert_score: float
    seconds: float
    episode_limit: int
    video: str | None = None
    not_comparable: str | None = None

    def normalized(self) -> np.ndarray:
        return 100.0 * (np.asarray(self.returns) - self.random_score) / (self.expert_score - self.random_score)


def bootstrap_ci(values: np.ndarray, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """95% percentile-bootstrap confidence interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return (float(values.mean()), float(values.mean())) if len(values) else (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


class FrameSampler:
    """Evenly spaced frames of an episode of unknown length, at most ``max_frames``, rendering only those kept.

    Every ``stride``-th step is rendered; when ``max_frames`` are held, every other one is dropped and the
    stride doubles. A 1000-step episode is rendered 350 times instead of 1000 (software OpenGL renders a
    Meta-World frame in ~25 ms, so the video was a third of the evaluation's time).
    """

    def __init__(self, max_frames: int = 150) -> None:
        if max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {max_frames}")
        self.max_frames, self.stride, self.step, self.frames = max_frames, 1, 0, []

    def offer(self, render: Callable[[], np.ndarray]) -> None:
        """One step of the episode: ``render()`` is called only if this step's frame is kept."""
        if self.step % self.stride == 0:
            self.frames.append(render())
            if len(self.frames) >= self.max_frames:
                self.frames = self.frames[::2]
                self.stride *= 2
        self.step += 1


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
    start = time.perf_counter()
    returns: list[float | None] = [None] * episodes
    successes: list[bool | None] = [None] * episodes
    lengths: list[int | None] = [None] * episodes
    frames = FrameSampler()
    try:
        actor.begin(task, envs)
        next_episode = 0
        slot_episode: list[int | None] = [None] * num_envs
        obs: list[dict | None] = [None] * num_envs
        ret = np.zeros(num_envs)
        steps = np.zeros(num_envs, dtype=np.int64)
        succ = np.zeros(num_envs, dtype=bool)

        def start_episode(i: int) -> None:
            nonlocal next_episode
            if next_episode >= episodes:
                slot_episode[i] = None
                return
            slot_episode[i] = next_episode
            obs[i], _ = envs[i].reset(seed=seed + next_episode)
            ret[i], steps[i], succ[i] = 0.0, 0, False
            actor.reset_env(i, obs[i])
            if i == 0 and video_path and next_episode == 0:
                frames.offer(envs[0].render)
            next_episode += 1

        for i in range(num_envs):
            start_episode(i)
        while any(e is not None for e in slot_episode):
            active = [i for i in range(num_envs) if slot_episode[i] is not None]
            actions = actor.act(active, [obs[i] for i in active])
            for i, action in zip(active, actions):
                obs[i], reward, terminated, truncated, info = envs[i].step(action)
                ret[i] += float(reward)
                steps[i] += 1
                succ[i] |= bool(info.get("success", False))
                if i == 0 and video_path and slot_episode[0] == 0:
                    frames.offer(envs[0].render)
                if terminated or truncated or steps[i] >= limit:
                    k = slot_episode[i]
                    returns[k], successes[k], lengths[k] = float(ret[i]), bool(succ[i]), int(steps[i])
                    if progress is not None:
                        progress.update(1)
                    start_episode(i)
    finally:
        for env in envs:
            env.close()
    video = None
    if video_path and frames.frames:
        video = str(write_gif(frames.frames, video_path, frame_step=frames.stride))
    return TaskResult(
        task_id=task.id,
        domain=task.domain,
        returns=[float(r) for r in returns],
        successes=[bool(s) for s in successes] if task.has_success else None,
        lengths=[int(n) for n in lengths],
        random_score=float(task.random_score),
        expert_score=float(task.expert_score),
        seconds=time.perf_counter() - start,
        video=video,
        episode_limit=limit,
        not_comparable=not_comparable(task, limit),
    )


def write_gif(frames: Sequence[np.ndarray], path: Path, max_frames: int = 300, fps: int = 20, frame_step: int = 1) -> Path:
    """Write RGB frames as an animated GIF (every k-th frame so at most ``max_frames``), atomically.

    ``frame_step``: environment steps between consecutive given frames; the GIF plays ``fps`` steps per second
    either way (a :class:`FrameSampler`'s frames are ``stride`` steps apart).
    """
    from PIL import Image

    path = Path(path)
    stride = max(1, math.ceil(len(frames) / max_frames))
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames[::stride]]
    duration = int(1000 * stride * frame_step / fps)  # ms per GIF frame
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return path


def summarize(results: Sequence[TaskResult], protocol: dict) -> dict:
    """Per-task and per-domain figures, with 95% CIs and the headline share."""
    tasks = {}
    for r in results:
        norm = r.normalized()
        tasks[r.task_id] = {
            "domain": r.domain,
            "episodes": len(r.returns),
            "return_mean": float(np.mean(r.returns)),
            "return_std": float(np.std(r.returns)),
            "return_ci95": bootstrap_ci(np.asarray(r.returns)),
            "normalized_mean": float(norm.mean()),
            "normalized_ci95": bootstrap_ci(norm),
            "success_rate": None if r.successes is None else float(np.mean(r.successes)),
            "mean_length": float(np.mean(r.lengths)),
            "random_score": r.random_score,
            "expert_score": r.expert_score,
            "seconds": r.seconds,
            "video": r.video,
            "returns": r.returns,
            "episode_limit": r.episode_limit,
            "not_comparable": r.not_comparable,
        }
    domains = {}
    for domain in sorted({r.domain for r in results}):
        rs = [r for r in results if r.domain == domain]
        means = np.array([tasks[r.task_id]["normalized_mean"] for r in rs])
        domains[domain] = {
            "tasks": len(rs),
            "normalized_mean": float(means.mean()),
            "normalized_ci95": _mean_of_tasks_ci([r.normalized() for r in rs]),
            "share_at_least_50": float(np.mean(means >= HEADLINE_THRESHOLD)),
        }
    all_means = np.array([t["normalized_mean"] for t in tasks.values()])
    return {
        "protocol": protocol,
        "tasks": tasks,
        "domains": domains,
        "overall": {
            "tasks": len(tasks),
            "normalized_mean": float(all_means.mean()) if len(all_means) else math.nan,
            "normalized_ci95": _mean_of_tasks_ci([r.normalized() for r in results]),
            "tasks_at_least_50": int((all_means >= HEADLINE_THRESHOLD).sum()),
            "share_at_least_50": float(np.mean(all_means >= HEADLINE_THRESHOLD)) if len(all_means) else math.nan,
            "not_comparable": [r.task_id for r in results if r.not_comparable],
        },
    }


def _mean_of_tasks_ci(per_task: Sequence[np.ndarray], seed: int = 0) -> tuple[float, float]:
    """Bootstrap CI of the mean over tasks of per-task mean scores (episodes resampled within each task)."""
    if not per_task:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    boot = np.zeros(BOOTSTRAP_SAMPLES)
    for v in per_task:
        v = np.asarray(v, dtype=np.float64)
        boot += v[rng.integers(0, len(v), size=(BOOTSTRAP_SAMPLES, len(v)))].mean(axis=1)
    boot /= len(per_task)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def write_report(summary: dict, out: Path, title: str = "omnipolicy evaluation") -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``scores.png`` into ``out`` (atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "scores.png"}
    write_json_atomic(paths["json"], summary, indent=2, default=_json_default)
    _plot_scores(summary, paths["png"])
    write_text_atomic(paths["md"], render_markdown(summary, title, paths["png"].name))
    return paths


def render_markdown(summary: dict, title: str, chart: str | None = None) -> str:
    o = summary["overall"]
    lines = [f"# {title}", ""]
    lines += [
        f"**{o['tasks_at_least_50']} of {o['tasks']} tasks at or above 50% of expert** "
        f"({100 * o['share_at_least_50']:.0f}%); mean expert-normalised score "
        f"{o['normalized_mean']:.1f} (95% CI {o['normalized_ci95'][0]:.1f} to {o['normalized_ci95'][1]:.1f}).",
        "",
    ]
    if o.get("not_comparable"):
        lines += [
            f"**Not comparable: {len(o['not_comparable'])} of {o['tasks']} tasks ran under another protocol than "
            f"their random and expert scores** (marked †): their normalised scores, and the means and counts above "
            f"that include them, are not expert-normalised scores of the protocol.",
            "",
        ]
    if chart:
        lines += [f"![expert-normalised score per task]({chart})", ""]
    lines += ["## Per task", "", "| task | domain | episodes | return (mean ± std) | success | normalised (95% CI) | random | expert | video |"]
    lines += ["| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for tid, t in summary["tasks"].items():
        succ = "—" if t["success_rate"] is None else f"{100 * t['success_rate']:.0f}%"
        ci = t["normalized_ci95"]
        video = f"[gif]({os.path.relpath(t['video'], summary['protocol'].get('out', '.'))})" if t["video"] else "—"
        mark = " †" if t.get("not_comparable") else ""
        lines.append(
            f"| {tid} | {t['domain']} | {t['episodes']} | {t['return_mean']:.1f} ± {t['return_std']:.1f} | {succ} | "
            f"{t['normalized_mean']:.1f} ({ci[0]:.1f} to {ci[1]:.1f}){mark} | {t['random_score']:.1f} | {t['expert_score']:.1f} | {video} |"
        )
    marked = [(tid, t["not_comparable"]) for tid, t in summary["tasks"].items() if t.get("not_comparable")]
    if marked:
        lines += [""] + [f"† {tid}: {why}." for tid, why in marked]
    lines += ["", "## Per domain", "", "| domain | tasks | normalised mean (95% CI) | tasks >= 50% |", "| --- | ---: | ---: | ---: |"]
    for d, v in summary["domains"].items():
        ci = v["normalized_ci95"]
        lines.append(f"| {d} | {v['tasks']} | {v['normalized_mean']:.1f} ({ci[0]:.1f} to {ci[1]:.1f}) | {100 * v['share_at_least_50']:.0f}% |")
    lines += ["", "## Protocol", ""]
    lines += [f"- {k}: {v}" for k, v in summary["protocol"].items()]
    lines.append("")
    return "\n".join(lines)


def _plot_scores(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["tasks"].items())
    if not tasks:
        return
    names = [tid for tid, _ in tasks]
    means = np.array([t["normalized_mean"] for _, t in tasks])
    lo = means - np.array([t["normalized_ci95"][0] for _, t in tasks])
    hi = np.array([t["normalized_ci95"][1] for _, t in tasks]) - means
    domains = sorted({t["domain"] for _, t in tasks})
    colors = {d: plt.cm.tab10(i % 10) for i, d in enumerate(domains)}
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), means, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], capsize=2,
           color=[colors[t["domain"]] for _, t in tasks])
    ax.axhline(100, color="k", lw=0.8, ls="--", label="expert")
    ax.axhline(HEADLINE_THRESHOLD, color="gray", lw=0.8, ls=":", label="50% of expert")
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("expert-normalised score")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[d]) for d in domains]
    ax.legend(handles + ax.get_legend_handles_labels()[0], domains + ["expert", "50% of expert"], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Expert-normalised score per task (95% CI)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


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
    from tqdm import tqdm

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
    import multiprocessing as mp

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
