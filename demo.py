"""The main job, end to end: collect the default suite, train one generalist, evaluate it, report.

``make demo`` runs ``omnipolicy demo`` with its defaults, sized to finish in
about 30 minutes on a 2-core CPU machine after set-up. Every stage is
resumable: collection continues an existing dataset, training resumes from the
last checkpoint, so rerunning after an interruption picks up where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoConfig:
    """Collect -> train -> evaluate -> report, with one set of weights for every task."""

    out: Path = Path("runs/demo")
    """Run folder: data/, checkpoint/, videos/, report.md, report.json."""
    tasks: tuple[str, ...] = ()
    """Task ids (default: the default suite)."""
    episodes: int = 0
    """Demonstration episodes per task (0: the per-domain defaults sized for the 30-minute budget)."""
    workers: int = 2
    """Collection worker processes."""
    preset: str = "cpu-small"
    """Model preset (see `omnipolicy train --help`)."""
    train_minutes: float = 12.0
    """Wall-clock training budget."""
    eval_episodes: int = 10
    """Evaluation episodes per task."""
    eval_envs: int = 10
    """Parallel evaluation environments per task."""
    seed: int = 0
    """Seed for collection and training."""


def demo_command(argv: list[str], prog: str) -> None:
    import tyro

    cfg = tyro.cli(DemoConfig, args=argv, prog=prog)
    run_demo(cfg)


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage and return the evaluation summary."""
    raise NotImplementedError("wired up once collection, training and the policy land")
