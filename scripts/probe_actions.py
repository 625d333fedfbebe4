"""Does the policy's action follow the scene? An open-loop probe across scenes.

The task's scripted expert drives ``--episodes`` unseen scenes; at every step the policy predicts an action on the
same observations (with the same history). Over the steps ``--first`` to ``--last``, each action dimension's
prediction is correlated with the expert's across scenes. With ``--relative-to joints`` the correlated quantity is
the motion (action minus the observation field ``joints``), which tells reading the scene from continuing the
motion the history shows. At step 0 of a task whose start pose is always the same (the SO-101's home), only the
cameras and the instruction say where to go: a correlation near 0 there means the policy predicts the average.

    python scripts/probe_actions.py runs/so101/train --task so101/lift-v1 --first 0 --last 0 --relative-to joints
    python scripts/probe_actions.py runs/so101/train --task so101/lift-v1 --first 3 --last 12 --relative-to joints

Ends with one line of JSON: the correlation, the mean absolute error and the error of always predicting the mean,
per action dimension.
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

from omnipolicy.agent import PolicyActor
from omnipolicy.envs.registry import get_task, make_env, make_expert


@dataclass(frozen=True)
class Config:
    checkpoint: tyro.conf.Positional[Path]
    """Checkpoint, checkpoints folder or training run folder."""
    task: str = "so101/lift-v1"
    """A continuous-action task of the checkpoint with a scripted expert."""
    episodes: int = 40
    """Scenes (reset seeds ``seed`` .. ``seed + episodes - 1``)."""
    seed: int = 10_000
    """First reset seed (the demonstrations use seeds from 0)."""
    first: int = 0
    """First step whose prediction is compared."""
    last: int = 0
    """Last step whose prediction is compared (the expert drives on to it)."""
    relative_to: str | None = None
    """Observation field subtracted from both actions (``joints``: compare motions, not targets)."""


def probe(cfg: Config) -> dict:
    """Run the probe; returns ``{"corr", "mae", "mae_of_mean", "samples"}`` (lists over action dimensions)."""
    if cfg.first < 0 or cfg.last < cfg.first:
        raise ValueError(f"need 0 <= first <= last, got first={cfg.first}, last={cfg.last}")
    task = get_task(cfg.task)
    if task.timestep.action.kind != "continuous":
        raise ValueError(f"{cfg.task} has a {task.timestep.action.kind} action; the probe compares continuous ones")
    actor = PolicyActor.from_checkpoint(cfg.checkpoint)
    env = make_env(cfg.task)
    predicted, shown = [], []
    for k in tqdm.trange(cfg.episodes, desc=f"probe {cfg.task}"):
        obs, _ = env.reset(seed=cfg.seed + k)
        expert = make_expert(cfg.task, seed=k)
        expert.reset(env, obs)
        actor.begin(task, [env])
        actor.reset_env(0, obs)
        for t in range(cfg.last + 1):
            mine, theirs = np.asarray(actor.act([0], [obs])[0], np.float64), np.asarray(expert.act(env, obs), np.float64)
            if t >= cfg.first:
                base = np.zeros_like(theirs)
                if cfg.relative_to:  # the first values only where the action has more (an -aim task's aim)
                    rel = np.asarray(obs[cfg.relative_to], np.float64)
                    base[:rel.size] = rel
                predicted.append(mine - base)
                shown.append(theirs - base)
            obs, _, terminated, truncated, _ = env.step(theirs)
            if terminated or truncated:
                break
    env.close()
    p, e = np.asarray(predicted), np.asarray(shown)  # (N, A)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = [float(np.corrcoef(p[:, j], e[:, j])[0, 1]) if e[:, j].std() > 0 else float("nan")
                for j in range(e.shape[1])]
    return {"task": cfg.task, "steps": [cfg.first, cfg.last], "relative_to": cfg.relative_to, "samples": len(e),
            "corr": [round(c, 3) for c in corr], "mae": np.abs(p - e).mean(0).round(4).tolist(),
            "mae_of_mean": np.abs(e - e.mean(0)).mean(0).round(4).tolist()}


if __name__ == "__main__":
    print(json.dumps(probe(tyro.cli(Config))))
