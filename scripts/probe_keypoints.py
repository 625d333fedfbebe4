"""Do a policy's spatial-softmax keypoints (``train --keypoints``) follow the SO-101 objects?

For ``--episodes`` unseen scenes of an ``so101/*`` camera task, each camera's keypoints at the first frame
(``GatoModel.keypoints.coordinates`` of the frame's patches) and where each coloured object stands on the
table. Colours are dealt to the objects at every reset, so a keypoint that tracks "the red thing" is measured
against the red object, wherever it is. Per camera and colour: the keypoint whose (x, y) predicts that object's
table (x, y) best by a least-squares linear fit (R², the mean over x and y; fitted on the first half of the
scenes and scored on the second, so a keypoint that does not track it scores about 0 or below), and the same
for the named object (``named``: what keypoints conditioned on the instruction, ``--keypoint-film``, should
follow; the instruction is read as the model reads it). The front
camera does not move, so a keypoint on an object maps to its table position by one fixed (near-linear) map;
the wrist camera's view starts from the same home pose in every scene.

    python scripts/probe_keypoints.py runs/so101/train --task so101/lift-v1 --episodes 80

Ends with one line of JSON: per camera, each colour's (and the named object's) best keypoint and its held-out R².
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: why in omnipolicy/cli.py
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tqdm
import tyro

from omnipolicy.agent.checkpoint import load_model_weights, resolve_checkpoint
from omnipolicy.envs.registry import make_env
from omnipolicy.envs.so101_scene import COLOURS
from omnipolicy.tokenizers import Tokenizer
from omnipolicy.tokenizers.image import image_to_patches, normalize_patches, patch_slots


@dataclass(frozen=True)
class Config:
    checkpoint: tyro.conf.Positional[Path]
    """Checkpoint, checkpoints folder or training run folder of a model trained with ``--keypoints``."""
    task: str = "so101/lift-v1"
    """An ``so101/*`` task with cameras."""
    episodes: int = 80
    """Scenes (reset seeds ``seed`` .. ``seed + episodes - 1``); half fit the maps, half score them."""
    seed: int = 10_000
    """First reset seed (the demonstrations use seeds below it)."""


def held_out_r2(features: np.ndarray, target: np.ndarray) -> float:
    """R² on the second half of the rows of the least-squares linear map (with intercept) fitted on the first:
    ``features`` (N, F) -> ``target`` (N, T), the mean over the target's columns."""
    x = np.c_[features, np.ones(len(features))]
    half = len(x) // 2
    coef, *_ = np.linalg.lstsq(x[:half], target[:half], rcond=None)
    err = ((x[half:] @ coef - target[half:]) ** 2).sum(0)
    var = ((target[half:] - target[half:].mean(0)) ** 2).sum(0)
    return float(np.mean(1.0 - err / np.maximum(var, 1e-12)))


@torch.no_grad()
def probe(cfg: Config) -> dict:
    """Run the probe; returns ``{"task", "checkpoint", "episodes", "keypoints", "cameras": {camera: {colour:
    {"keypoint", "r2"}}}}``."""
    if cfg.episodes < 8:
        raise ValueError(f"--episodes: at least 8 scenes (half fit, half score), got {cfg.episodes}")
    model, _ = load_model_weights(resolve_checkpoint(cfg.checkpoint))
    if model.keypoints is None:
        raise ValueError(f"{cfg.checkpoint}: the model has no keypoints (trained without --keypoints)")
    model.eval()
    env = make_env(cfg.task)
    cameras = [name for name in ("front", "wrist") if name in env.observation_space.spaces]
    if not cameras:
        raise ValueError(f"{cfg.task!r} has no camera observation (front, wrist)")
    tokenizer = Tokenizer.default()
    layout = tokenizer.layout
    keypoints = {name: [] for name in cameras}  # camera -> per scene (K, 2)
    places = {colour: [] for colour in [*COLOURS, "named"]}  # per scene the object's table (x, y)
    for k in tqdm.trange(cfg.episodes, desc=f"keypoints {cfg.task}"):
        obs, _ = env.reset(seed=cfg.seed + k)
        scene = env.unwrapped
        for i, colour in enumerate(scene.colours):
            places[colour].append(scene.object_pos(i)[:2])
        places["named"].append(scene.object_pos(scene.target_index)[:2])
        for name in cameras:
            raw, pos = image_to_patches(np.asarray(obs[name])[None], field=name)
            patches = torch.from_numpy(normalize_patches(raw[0]))
            pos_t = torch.from_numpy(pos.astype(np.int64))
            instruction = None
            if model.cfg.keypoint_film:  # the instruction's text tokens, then the image's patches: one timestep
                text = tokenizer.encode_text(obs["instruction"]).astype(np.int64)
                ids = np.r_[text, np.full(len(pos), layout.patch_id)]
                tokens, pidx = torch.from_numpy(ids)[None], torch.from_numpy(patch_slots(ids, layout.patch_id))[None]
                instruction = model.patch_instructions(tokens, torch.arange(tokens.shape[1])[None], pidx, len(pos))
            xy, _ = model.keypoints.coordinates(model.patch_embed.features(patches), pos_t, instruction)
            keypoints[name].append(xy[0].numpy())  # the one image's (K, 2)
    env.close()
    out: dict[str, dict] = {}
    for name in cameras:
        kp = np.stack(keypoints[name])  # (N, K, 2)
        out[name] = {}
        for colour, where in places.items():
            target = np.stack(where)
            scores = [held_out_r2(kp[:, j], target) for j in range(kp.shape[1])]
            best = int(np.argmax(scores))
            out[name][colour] = {"keypoint": best, "r2": round(scores[best], 3)}
    return {"task": cfg.task, "checkpoint": str(cfg.checkpoint), "episodes": cfg.episodes,
            "keypoints": int(model.cfg.keypoints), "cameras": out}


if __name__ == "__main__":
    print(json.dumps(probe(tyro.cli(Config))))
