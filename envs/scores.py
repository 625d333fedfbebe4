"""Expert-normalised scores of an evaluation: per task, per domain and overall, with bootstrap confidence intervals.

Score 0 = the task's random score, 100 = its expert score (Gato's definition); 95% intervals by a seeded
percentile bootstrap over episodes; Gato's headline metric is the share of tasks at or above 50% of expert.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
HEADLINE_THRESHOLD = 50.0


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
    labels: list[dict[str, str]] | None = None
    flags: list[dict[str, bool]] | None = None

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
            "successes": r.successes,
            "mean_length": float(np.mean(r.lengths)),
            "random_score": r.random_score,
            "expert_score": r.expert_score,
            "seconds": r.seconds,
            "video": r.video,
            "returns": r.returns,
            "episode_limit": r.episode_limit,
            "not_comparable": r.not_comparable,
            **episode_breakdown(r),
        }
    domains = {}
    for domain in sorted({r.domain for r in results}):
        rs = [r for r in results if r.domain == domain]
        means = np.array([tasks[r.task_id]["normalized_mean"] for r in rs])
        domains[domain] = {
            "tasks": len(rs),
            "normalized_mean": float(means.mean()),
            "normalized_ci95": mean_of_tasks_ci([r.normalized() for r in rs]),
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
            "normalized_ci95": mean_of_tasks_ci([r.normalized() for r in results]),
            "tasks_at_least_50": int((all_means >= HEADLINE_THRESHOLD).sum()),
            "share_at_least_50": float(np.mean(all_means >= HEADLINE_THRESHOLD)) if len(all_means) else math.nan,
            "not_comparable": [r.task_id for r in results if r.not_comparable],
        },
    }


def episode_breakdown(r: TaskResult) -> dict:
    """Success and score per value of each episode label (``breakdown``), and the rate of each flag
    (``flag_rates``), for a task whose env labels its episodes (:data:`omnipolicy.envs.rollout.EPISODE_LABELS`);
    empty otherwise."""
    out: dict = {}
    norm = r.normalized()
    if r.labels and any(r.labels):
        breakdown: dict[str, dict[str, dict]] = {}
        for key in sorted({k for labels in r.labels for k in labels}):
            values = sorted({labels[key] for labels in r.labels if key in labels})
            breakdown[key] = {}
            for value in values:
                idx = [i for i, labels in enumerate(r.labels) if labels.get(key) == value]
                breakdown[key][value] = {
                    "episodes": len(idx),
                    "success_rate": None if r.successes is None else float(np.mean([r.successes[i] for i in idx])),
                    "normalized_mean": float(norm[idx].mean()),
                }
        out["breakdown"] = breakdown
    if r.flags and any(r.flags):
        keys = sorted({k for flags in r.flags for k in flags})
        out["flag_rates"] = {k: float(np.mean([bool(flags.get(k, False)) for flags in r.flags])) for k in keys}
    return out


def mean_of_tasks_ci(per_task: Sequence[np.ndarray], seed: int = 0) -> tuple[float, float]:
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
