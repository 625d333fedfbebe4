"""Where does an SO-101 policy's gripper go? A closed-loop probe of the named object.

The policy drives ``--episodes`` unseen scenes of an ``so101/*`` task. Each step records the distance from the
point between the jaw pads to each of the four objects. Per episode: success, the object the jaws came closest to
(the named one or another), the closest approach to the named object and how high above its centre the jaws were
then, and whether they gripped it (closed and stopped on it, as the expert lifts from). A policy that reads the
instruction and finds the object in the frame has the named object nearest in most episodes; one that hovers over
the middle of the table has it nearest at chance (one in four) with a closest approach of several centimetres;
one that finds it but waits above it is centimetres above at its closest and never grips; one that grips and does
not lift, fails after the grip. The scripted expert, measured the same way with ``--expert``, gives the reference.

    python scripts/so101_reach.py runs/so101/train --task so101/lift-v1 --episodes 30
    python scripts/so101_reach.py --expert --task so101/lift-v1 --episodes 30

Ends with one line of JSON: success rate, named-object-nearest rate, median closest approach (m) and height above
the object there (m), grip rate, episodes.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: why in omnipolicy/cli.py
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tqdm
import tyro

from omnipolicy.envs.registry import get_task, make_env, make_expert
from omnipolicy.envs.so101_scene import jaw_midpoint


@dataclass(frozen=True)
class Config:
    checkpoint: tyro.conf.Positional[Path | None] = None
    """Checkpoint, checkpoints folder or training run folder (omit with ``--expert``)."""
    task: str = "so101/lift-v1"
    """An ``so101/*`` task the checkpoint was trained on (or shares a spec with: the ``-unseen-`` variants)."""
    episodes: int = 30
    """Scenes (reset seeds ``seed`` .. ``seed + episodes - 1``)."""
    seed: int = 10_000
    """First reset seed (the demonstrations use seeds from 0)."""
    expert: bool = False
    """Drive with the scripted expert instead of a policy (the reference figures)."""
    continuous_decoding: Literal["auto", "mean", "mode"] = "auto"
    """The policy's decoding of continuous action dimensions (as `omnipolicy eval`'s option)."""


def reach(cfg: Config, actor=None) -> dict:
    """Run the probe; returns ``{"success", "named_nearest", "closest_median_m", "above_median_m", "gripped",
    "wrong_object", "episodes"}``.

    ``actor``: an already loaded policy (``begin``, ``reset_env``, ``act`` as :class:`PolicyActor`) instead of
    ``cfg.checkpoint``'s.
    """
    if not cfg.task.startswith("so101/"):
        raise ValueError(f"the reach probe measures so101/* tasks (their objects and jaws), got {cfg.task!r}")
    if (cfg.checkpoint is None and actor is None) != cfg.expert:
        raise ValueError("give a checkpoint, or --expert to measure the scripted expert (not both)")
    task = get_task(cfg.task)
    if actor is None and not cfg.expert:
        from omnipolicy.agent import PolicyActor

        actor = PolicyActor.from_checkpoint(cfg.checkpoint, continuous_decoding=cfg.continuous_decoding)
    env = make_env(cfg.task)
    judge = make_expert(cfg.task)  # its grip test: the jaws closed and stopped on the object
    rows = []
    for k in tqdm.trange(cfg.episodes, desc=f"reach {cfg.task}"):
        obs, info = env.reset(seed=cfg.seed + k)
        scene = env.unwrapped  # the So101Env (objects, jaws, named object)
        if actor is not None:
            actor.begin(task, [env])
            actor.reset_env(0, obs)
        else:
            expert = make_expert(cfg.task, seed=k)
            expert.reset(env, obs)
        closest = np.full(len(scene.objects), np.inf)
        above, gripped, done = np.nan, False, False
        while not done:
            action = actor.act([0], [obs])[0] if actor is not None else expert.act(env, obs)
            obs, _, terminated, truncated, info = env.step(action)
            jaws = jaw_midpoint(scene.model, scene.data)
            dist = np.array([np.linalg.norm(scene.object_pos(i) - jaws) for i in range(len(scene.objects))])
            named = scene.target_index
            if dist[named] < closest[named]:
                above = float(jaws[2] - scene.object_pos(named)[2])
            closest = np.minimum(closest, dist)
            gripped |= judge.grips(scene, named)
            done = terminated or truncated
        rows.append({"success": bool(info.get("success")), "named_nearest": int(np.argmin(closest)) == named,
                     "closest_named_m": float(closest[named]), "above_m": above, "gripped": gripped,
                     "wrong_object": bool(info.get("wrong_object"))})
    env.close()
    return {"task": cfg.task, "driver": "expert" if cfg.expert else str(cfg.checkpoint or type(actor).__name__),
            "episodes": len(rows),
            "success": float(np.mean([r["success"] for r in rows])),
            "named_nearest": float(np.mean([r["named_nearest"] for r in rows])),
            "closest_median_m": round(float(np.median([r["closest_named_m"] for r in rows])), 4),
            "above_median_m": round(float(np.median([r["above_m"] for r in rows])), 4),
            "gripped": float(np.mean([r["gripped"] for r in rows])),
            "wrong_object": float(np.mean([r["wrong_object"] for r in rows]))}


if __name__ == "__main__":
    print(json.dumps(reach(tyro.cli(Config))))
