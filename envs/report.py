"""An evaluation's report: ``report.json``, ``report.md`` with a per-task table, ``scores.png``, and episode GIFs."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from omnipolicy.files import atomic_path, write_json_atomic, write_text_atomic

from .scores import HEADLINE_THRESHOLD


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
    lines += _breakdown_markdown(summary)
    lines += ["", "## Per domain", "", "| domain | tasks | normalised mean (95% CI) | tasks >= 50% |", "| --- | ---: | ---: | ---: |"]
    for d, v in summary["domains"].items():
        ci = v["normalized_ci95"]
        lines.append(f"| {d} | {v['tasks']} | {v['normalized_mean']:.1f} ({ci[0]:.1f} to {ci[1]:.1f}) | {100 * v['share_at_least_50']:.0f}% |")
    lines += ["", "## Protocol", ""]
    lines += [f"- {k}: {v}" for k, v in summary["protocol"].items()]
    lines.append("")
    return "\n".join(lines)


def _breakdown_markdown(summary: dict) -> list[str]:
    """Per-value tables of the tasks whose episodes carry labels (phrasing, named object) and flag rates."""
    lines: list[str] = []
    for tid, t in summary["tasks"].items():
        if not t.get("breakdown") and not t.get("flag_rates"):
            continue
        lines += ["", f"### {tid}", ""]
        for flag, rate in t.get("flag_rates", {}).items():
            lines.append(f"- {flag.replace('_', ' ')} rate: {100 * rate:.0f}% of {t['episodes']} episodes")
        for key, values in t.get("breakdown", {}).items():
            lines += ["", f"| {key.replace('_', ' ')} | episodes | success | normalised |", "| --- | ---: | ---: | ---: |"]
            for value, v in values.items():
                succ = "—" if v["success_rate"] is None else f"{100 * v['success_rate']:.0f}%"
                lines.append(f"| {value} | {v['episodes']} | {succ} | {v['normalized_mean']:.1f} |")
    return lines


def _plot_scores(summary: dict, path: Path) -> None:
    import matplotlib  # a second to import: only a report with a chart loads it

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
