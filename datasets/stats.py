"""Statistics (LeRobot's stats.json / episode stats: min, max, mean, std, count, quantiles)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
IMAGE_STATS_FRAMES = 16


def numeric_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """min, max, mean, std, count and the QUANTILES (numpy's "linear" method) per element."""
    v = np.sort(values.reshape(len(values), -1).astype(np.float64), axis=0)  # (T, D)
    n = len(v)
    mean = v.mean(0)
    out = {"min": v[0], "max": v[-1], "mean": mean, "std": np.sqrt(np.mean((v - mean) ** 2, axis=0)), "count": np.array([n])}
    pos = np.asarray(QUANTILES) * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo)[:, None]
    vals = v[lo] + (v[hi] - v[lo]) * frac  # (len(QUANTILES), D)
    for q, val in zip(QUANTILES, vals):
        out[f"q{int(round(q * 100)):02d}"] = val
    return out


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of (T, H, W, C) uint8 frames scaled to [0, 1], over at most ~IMAGE_STATS_FRAMES frames."""
    step = max(1, len(frames) // IMAGE_STATS_FRAMES)
    sample = frames[::step].astype(np.float64) / 255.0  # (t, H, W, C)
    flat = sample.reshape(-1, sample.shape[-1])  # (t*H*W, C)
    out = numeric_stats(flat)
    out = {k: (v if k == "count" else v.reshape(-1, 1, 1)) for k, v in out.items()}  # (C, 1, 1) like LeRobot
    out["count"] = np.array([len(sample)])
    return out


def aggregate_stats(stats: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Combine per-episode stats: exact min/max/mean/std/count, count-weighted mean of quantiles (as LeRobot)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in sorted({k for s in stats for k in s}):
        parts = [s[key] for s in stats if key in s]
        n = np.array([float(p["count"][0]) for p in parts])
        w = (n / n.sum()).reshape((-1,) + (1,) * np.ndim(parts[0]["mean"]))
        means = np.stack([p["mean"] for p in parts])
        mean = (w * means).sum(0)
        var = (w * (np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2)).sum(0)
        agg = {
            "min": np.min([p["min"] for p in parts], axis=0),
            "max": np.max([p["max"] for p in parts], axis=0),
            "mean": mean,
            "std": np.sqrt(var),
            "count": np.array([int(n.sum())]),
        }
        for q in parts[0]:
            if q.startswith("q"):
                agg[q] = (w * np.stack([p[q] for p in parts])).sum(0)
        out[key] = agg
    return out


def stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    """Stats as JSON-ready nested lists (the content of ``meta/stats.json``)."""
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}
