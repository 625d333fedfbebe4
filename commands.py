"""The commands that join layers: ``omnipolicy eval``, ``omnipolicy dagger`` and ``omnipolicy dataset``.

They sit above every layer they join: the model (``agent``: a checkpoint becomes a ``PolicyActor``), the
tasks and the evaluation protocol (``envs``), the episode store (``datasets``: DAgger rounds, the store's
subcommands) and the robots (``robot_bridge``: ``dataset from-rosbag`` reads a task's arm). The work itself
lives in those layers (``envs.evaluate.evaluate``, ``datasets.dagger.dagger_round``, ``datasets.cli``,
``robot_bridge.rosbag_import``); a command parses its options, builds what it needs and prints the outcome.
The model (torch) is imported only by the commands that run one, so ``omnipolicy dataset`` starts without it.

    omnipolicy eval --checkpoint runs/train --episodes 10
    omnipolicy dagger --checkpoint runs/train --task dmc/cartpole-swingup --episodes 10 --out data/dagger
    omnipolicy dataset info data/demos
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from omnipolicy.datasets.cli import DATASET_SUBCOMMANDS, run_dataset_subcommand
from omnipolicy.datasets.dagger import DEFAULT_SEED, dagger_round
from omnipolicy.envs import get_task
from omnipolicy.envs.evaluate import evaluate
from omnipolicy.envs.rollout import Actor, ExpertActor, RandomActor
from omnipolicy.robot_bridge.rosbag_import import FromRosbag, from_rosbag

# ---------------------------------------------------------------------------------------------
# omnipolicy eval


@dataclass
class EvalConfig:
    """Evaluate a checkpoint (or the experts, or random play) under the shared protocol."""

    checkpoint: Path | None = None
    """Checkpoint directory written by `omnipolicy train`. Omit with --actor expert/random."""
    tasks: tuple[str, ...] = ()
    """Task ids to evaluate (default: every task the checkpoint was trained on)."""
    episodes: int = 20
    """Episodes per task."""
    num_envs: int = 8
    """Parallel environments per task, batched through the policy."""
    seed: int = 10_000
    """Seed of episode 0 of each task; episode k uses seed + k."""
    out: Path = Path("runs/eval")
    """Folder for report.md, report.json, scores.png and videos/."""
    actor: str = "policy"
    """Who acts: `policy` (the checkpoint), `expert` (scripted experts) or `random`."""
    video: bool = True
    """Write one rollout GIF per task."""
    max_steps: int | None = None
    """Cap on episode length (default: each task's own limit, the one its random and expert scores were measured at;
    the report marks the normalised score of a task capped below it as not comparable)."""
    temperature: float = 0.0
    """Sampling temperature for action tokens (0 = greedy)."""
    continuous_decoding: Literal["auto", "mean", "mode"] = "auto"
    """Greedy bin of a continuous action dimension: the expected bin under the model's distribution (mean), the
    most likely one (mode, Gato's argmax), or auto: the checkpoint's own preference (its training run's
    ``--decoding``; by default mean for checkpoints trained with Gaussian bin targets, mode otherwise)."""
    ensemble_weight: float = 0.01
    """Temporal-ensembling weight m of a checkpoint trained with action chunking and chunk_execution=ensemble: the
    executed action is the mean of the overlapping chunks' predictions weighted exp(-m * i), i = 0 the oldest
    (ACT's convention and default; 0 = plain mean, < 0 favours the newest). Other checkpoints ignore it."""
    device: str = "cpu"
    """Torch device for the policy."""
    workers: int = 1
    """Processes evaluating tasks side by side, each loading its own copy of the policy (2 on a 2-core CPU
    machine roughly halves the time; keep 1 on a GPU). Scores do not depend on it (up to float rounding)."""


def make_actor(cfg: EvalConfig) -> tuple[Actor, tuple[str, ...]]:
    """The actor and the task ids an :class:`EvalConfig` asks for."""
    if cfg.actor == "policy":
        if cfg.checkpoint is None:
            raise ValueError("--checkpoint is required with --actor policy (or use --actor expert / random)")
        from omnipolicy.agent import PolicyActor  # torch: only the commands that run a model load it

        actor = PolicyActor.from_checkpoint(cfg.checkpoint, cfg.device, cfg.temperature, cfg.continuous_decoding,
                                            cfg.ensemble_weight)
        known = actor.tasks
        tasks = cfg.tasks or known
        unknown = [t for t in tasks if not actor.can_act(t)]  # a variant of a known task (held-out phrasings) too
        if unknown:
            raise ValueError(f"Checkpoint was not trained on {unknown}; it knows {list(known)}")
        return actor, tasks
    if not cfg.tasks:
        raise ValueError(f"--tasks is required with --actor {cfg.actor}")
    if cfg.actor == "expert":
        return ExpertActor(), cfg.tasks
    if cfg.actor == "random":
        return RandomActor(), cfg.tasks
    raise ValueError(f"Unknown actor {cfg.actor!r}; expected one of 'policy', 'expert', 'random'")


def eval_command(argv: list[str], prog: str) -> None:
    """Entry point of ``omnipolicy eval``."""
    cfg = tyro.cli(EvalConfig, args=argv, prog=prog)
    actor, tasks = make_actor(cfg)
    for t in tasks:
        get_task(t)  # unknown ids fail before any rollout, with close matches
    decoding = actor.policy.continuous_decoding if cfg.actor == "policy" else None  # "auto" resolved
    protocol = {"checkpoint": str(cfg.checkpoint), "temperature": cfg.temperature, "continuous_decoding": decoding}
    if cfg.actor == "policy" and actor.policy.task_decoding:
        protocol["task_decoding"] = actor.policy.task_decoding
    if cfg.actor == "policy" and actor.policy.meta.model.action_chunk > 1:
        model = actor.policy.meta.model
        protocol["action_chunk"] = {"size": model.action_chunk, "execution": model.chunk_execution,
                                    **({"ensemble_weight": cfg.ensemble_weight}
                                       if model.chunk_execution == "ensemble" else {})}
    summary = evaluate(actor, tasks, cfg.episodes, cfg.out, cfg.num_envs, cfg.seed, cfg.video, cfg.max_steps,
                       extra_protocol=protocol, workers=cfg.workers)
    o = summary["overall"]
    print(f"{o['tasks_at_least_50']}/{o['tasks']} tasks >= 50% of expert; mean normalised {o['normalized_mean']:.1f}")
    print(f"report: {Path(cfg.out) / 'report.md'}")


# ---------------------------------------------------------------------------------------------
# omnipolicy dagger


@dataclass(frozen=True)
class DaggerConfig:
    """Roll out a checkpoint's policy and store the expert's action in each visited state (one DAgger round)."""

    checkpoint: Path
    """Checkpoint, checkpoints folder or training run folder."""
    task: Annotated[tuple[str, ...], tyro.conf.UseAppendAction]
    """Task id to run (repeat the flag for several tasks); the checkpoint must know it."""
    episodes: int
    """Episodes added per task in this round (run side by side through the policy)."""
    out: Path
    """Output folder; each task is written to OUT/<task id>."""
    max_steps: int | None = None
    """Cap on episode length (default: the task's own limit)."""
    expert_share: float = 0.0
    """Probability that a step executes the expert's action instead of the policy's (DAgger's beta; 0 = the
    policy drives every step)."""
    seed: int = DEFAULT_SEED
    """Seeds are taken from here upwards, skipping those the store already holds."""
    workers: int = 1
    """Processes that run batches of episodes side by side (each loads the checkpoint)."""
    num_envs: int = 16
    """Episodes of a task run side by side through the policy in one batch; each batch is stored when it ends
    (memory holds one batch's environments, renderers and recorded frames per worker)."""
    continuous_decoding: Literal["auto", "mean", "mode"] = "auto"
    """How the policy decodes a continuous action dimension while it drives (as in `omnipolicy eval`): run the
    round with the decoding it will be evaluated with, so the expert labels the states that policy reaches."""


def dagger_command(argv: list[str], prog: str) -> None:
    """Entry point of ``omnipolicy dagger``."""
    from omnipolicy.agent import PolicyActor  # torch: only the commands that run a model load it

    cfg = tyro.cli(DaggerConfig, args=argv, prog=prog)
    t0 = time.perf_counter()
    actor = PolicyActor.from_checkpoint(cfg.checkpoint, continuous_decoding=cfg.continuous_decoding)
    summary = dagger_round(actor, cfg.task, cfg.episodes, cfg.out, max_steps=cfg.max_steps,
                           expert_share=cfg.expert_share, seed=cfg.seed, workers=cfg.workers,
                           num_envs=cfg.num_envs)
    width = max(len(t) for t in summary)
    for tid, s in summary.items():
        succ = "" if s["policy_success_rate"] is None else f", success {100 * s['policy_success_rate']:.0f}%"
        print(f"{tid:<{width}}  +{s['new']} episodes ({s['steps']} labelled steps; policy return "
              f"{s['policy_return']:.2f}{succ})  -> {s['path']} ({s['episodes']} episodes)")
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2),
                      "steps": sum(s["steps"] for s in summary.values()),
                      "policy_return": {t: round(s["policy_return"], 3) for t, s in summary.items()}}))


# ---------------------------------------------------------------------------------------------
# omnipolicy dataset


def dataset_command(argv: list[str], prog: str) -> None:
    """Entry point of ``omnipolicy dataset``: the store's subcommands and ``from-rosbag``."""
    subcommands = DATASET_SUBCOMMANDS | Annotated[FromRosbag, tyro.conf.subcommand("from-rosbag")]
    cmd = tyro.cli(subcommands, args=argv, prog=prog)
    if isinstance(cmd, FromRosbag):
        from_rosbag(cmd)
    else:
        run_dataset_subcommand(cmd)
