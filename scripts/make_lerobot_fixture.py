"""Write a small LeRobot dataset with LeRobot's own code, and what LeRobot's own loader reads back from it.

Runs in the LeRobot environment (``make test-interop`` builds ``.venv-lerobot``), never in the project's:

    .venv-lerobot/bin/python scripts/make_lerobot_fixture.py tests/data/lerobot_so101_v30

writes ``OUT/`` (``LeRobotDataset.create``, ``add_frame``, ``save_episode``, ``finalize``: LeRobot's v3.0 layout, the
``front`` camera as AV1 mp4, the ``wrist`` camera as PNG images in the rows) and ``OUT.loaded.npz`` with every
frame as ``LeRobotDataset`` (pyav backend) returns it, so the default tests compare omnipolicy's reader with
LeRobot's loader frame by frame without LeRobot installed. The arm is made up (six SO-101-like joints, not in
omnipolicy's task registry); the front camera shows a square that moves with the first two joints.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"]
TASKS = ["pick up the red cube", "push the blue cube to the zone"]
FPS, EPISODES, LENGTHS = 10, 4, (12, 9, 14, 11)
FRONT, WRIST = (64, 64), (32, 48)


def features() -> dict:
    return {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": JOINTS},
        "observation.images.front": {"dtype": "video", "shape": (*FRONT, 3), "names": ["height", "width", "channels"]},
        "observation.images.wrist": {"dtype": "image", "shape": (*WRIST, 3), "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (6,), "names": JOINTS},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
    }


def frame(k: int, t: int, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = FRONT
    front = np.full((h, w, 3), (40 + 20 * k, 60, 90), np.uint8)
    y, x = int((state[0] + 1) / 2 * (h - 12)), int((state[1] + 1) / 2 * (w - 12))
    front[y:y + 12, x:x + 12] = (220, 40, 40) if k % 2 == 0 else (40, 40, 220)
    wrist = np.zeros((*WRIST, 3), np.uint8)
    wrist[:, : 4 + 3 * t] = (200, 180, 30)
    return front, wrist


def write(out: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if out.exists():
        shutil.rmtree(out)
    ds = LeRobotDataset.create("omnipolicy/so101_fixture", fps=FPS, features=features(), root=out, robot_type="so101_like",
                               use_videos=True)
    rng = np.random.default_rng(0)
    for k in range(EPISODES):
        state = rng.uniform(-0.8, 0.8, 6).astype(np.float32)
        for t in range(LENGTHS[k]):
            action = np.clip(state + rng.normal(0, 0.1, 6), -1, 1).astype(np.float32)
            front, wrist = frame(k, t, state)
            ds.add_frame({"observation.state": state, "observation.images.front": front, "observation.images.wrist": wrist,
                          "action": action, "next.reward": np.float32([t == LENGTHS[k] - 1]), "task": TASKS[k % 2]})
            state = action
        ds.save_episode()
    ds.finalize()


def dump(out: Path) -> None:
    """Every frame as LeRobot's loader returns it (cameras as uint8 (H, W, C))."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("omnipolicy/so101_fixture", root=out, video_backend="pyav")
    arrays: dict[str, list] = {}
    tasks = []
    for i in range(len(ds)):
        item = ds[i]
        tasks.append(item["task"])
        for key, value in item.items():
            if hasattr(value, "numpy"):
                v = value.numpy()
                if key in ds.meta.camera_keys:  # (C, H, W) float in [0, 1] -> (H, W, C) uint8
                    v = np.round(v * 255).astype(np.uint8).transpose(1, 2, 0)
                arrays.setdefault(key, []).append(v)
    np.savez_compressed(str(out) + ".loaded.npz", **{k: np.stack(v) for k, v in arrays.items()})
    Path(str(out) + ".loaded.json").write_text(json.dumps({"task": tasks, "camera_keys": ds.meta.camera_keys}, indent=1) + "\n")


if __name__ == "__main__":
    target = Path(sys.argv[1])
    write(target)
    dump(target)
    print(f"wrote {target} and {target}.loaded.npz")
