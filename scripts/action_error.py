"""How far is a checkpoint's action from the expert's, in the states the expert visits? A quiet offline figure.

The task's scripted expert drives each episode (reset seeds unseen in the
demonstrations by default); at every step the policy, given the same
observation history, predicts its action, and the mean absolute difference to
the expert's action is taken over steps and action dimensions. Unlike rollout
returns, which move by tens of points between training runs of a task, this
figure barely moves with the seed (0.1047 and 0.1047 for two seeds of one
Meta-World recipe), so it tells small changes of a recipe apart.

    python scripts/action_error.py runs/demo/train                       # the checkpoint's continuous-action tasks
    python scripts/action_error.py runs/demo/train --tasks metaworld/push-v3 --steps 300

Ends with one line of JSON: the error per task and its mean.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: why in omnipolicy/cli.py
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tqdm
import tyro

from omnipolicy.agent import PolicyActor, load_meta
from omnipolicy.datasets.dagger import policy_episodes
from omnipolicy.envs.registry import get_task


@dataclass(frozen=True)
class Config:
    checkpoint: tyro.conf.Positional[Path]
    """Checkpoint, checkpoints folder or training run folder."""
    tasks: tuple[str, ...] = ()
    """Task ids (default: every task of the checkpoint whose action is continuous)."""
    envs: int = 5
    """Episodes per task, run side by side through the policy."""
    steps: int = 150
    """Steps per episode (fewer if an episode ends earlier)."""
    seed: int = 50_000
    """Reset seed of episode 0 (episode k: seed + k)."""


def action_error(actor: PolicyActor, task_id: str, envs: int, steps: int, seed: int) -> float:
    """Mean |policy action - expert action| over the expert-driven steps of ``envs`` episodes."""
    spec = get_task(task_id)
    if spec.timestep.action.kind != "continuous":
        raise ValueError(f"{task_id}: action error needs a continuous action, the task's is {spec.timestep.action.kind}")
    predicted: list[list] = []
    episodes = policy_episodes(actor, task_id, [seed + k for k in range(envs)], max_steps=steps, expert_share=1.0,
                               chosen=predicted)
    return float(np.mean(np.concatenate([
        np.abs(np.asarray(guesses, dtype=np.float64) - np.asarray(ep.actions, dtype=np.float64)).ravel()
        for guesses, ep in zip(predicted, episodes)
    ])))


def main(cfg: Config) -> dict[str, float]:
    meta = load_meta(cfg.checkpoint)
    tasks = cfg.tasks or tuple(t for t, s in meta.tasks.items() if s.action.kind == "continuous")
    if not tasks:
        raise SystemExit(f"{cfg.checkpoint}: no task with a continuous action; name some with --tasks")
    actor = PolicyActor.from_checkpoint(cfg.checkpoint)
    errors = {}
    for task_id in tqdm.tqdm(tasks, desc="action error", unit="task"):
        errors[task_id] = action_error(actor, task_id, cfg.envs, cfg.steps, cfg.seed)
        tqdm.tqdm.write(f"{task_id:40s} {errors[task_id]:.4f}")
    mean = float(np.mean(list(errors.values())))
    print(f"mean action error over {len(errors)} task(s): {mean:.4f}")
    print(json.dumps({"checkpoint": str(cfg.checkpoint), "envs": cfg.envs, "steps": cfg.steps, "seed": cfg.seed,
                      "action_error": {t: round(v, 4) for t, v in errors.items()}, "mean": round(mean, 4)}))
    return errors


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main(tyro.cli(Config))
