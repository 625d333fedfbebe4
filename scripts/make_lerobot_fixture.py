"""Write a small LeRobot dataset with LeRobot's own code, and what LeRobot's own loader reads back from it.

Runs in the LeRobot environment (``make test-interop`` builds ``.venv-lerobot``), never in the project's:

    .venv-lerobot/bin/python scripts/make_lerobot_fixture.py tests/data/lerobot_so101_v30

writes ``OUT/`` (``LeRobotDataset.create``, ``add_frame``, ``save_episode``, ``finalize``: LeRobot's v3.0 layout, the
``front`` camera as AV1 mp4, the ``wrist`` camera as PNG images in the rows) and ``OUT.loaded.npz`` with every
frame as ``LeRobotDataset`` (pyav backend) returns it, so the default tests compare omnipolicy's reader with
LeRobot's loader frame by frame without LeRobot installed. The arm is made up (six SO-101-like joints, not in
omnipolicy's task registry); the front camera shows a square that moves with the first two joints.

Options (the defaults make the committed fixture): ``--front-size H W`` and ``--lengths N ...`` (frames per
episode) write a larger dataset, ``--textured`` gives the front camera a textured scene and sensor noise,
``--no-dump`` skips ``OUT.loaded.*``, and ``--time-loader SECONDS`` times ``LeRobotDataset.__getitem__`` (pyav
backend, each sample's frames decoded on demand) on random samples and prints its samples/s as the last line,
one JSON object (``scripts/bench_loader.py`` compares against it):

    .venv-lerobot/bin/python scripts/make_lerobot_fixture.py /tmp/so101_big --front-size 240 320 \\
        --lengths 100 100 100 --textured --no-dump --time-loader 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"]
TASKS = ["pick up the red cube", "push the blue cube to the zone"]
REPO_ID = "omnipolicy/so101_fixture"
FPS, LENGTHS = 10, (12, 9, 14, 11)
FRONT, WRIST = (64, 64), (32, 48)


def features(front: tuple[int, int] = FRONT) -> dict:
    return {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": JOINTS},
        "observation.images.front": {"dtype": "video", "shape": (*front, 3), "names": ["height", "width", "channels"]},
        "observation.images.wrist": {"dtype": "image", "shape": (*WRIST, 3), "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (6,), "names": JOINTS},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
    }


def scene(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A camera-like static background, (H, W, 3) float: a lit tabletop's gradient and a smooth random texture."""
    h, w = size
    coarse = rng.normal(0, 25, (h // 8 + 1, w // 8 + 1, 3))
    texture = np.kron(coarse, np.ones((8, 8, 1)))[:h, :w]  # blocks of 8 pixels, then smoothed along both axes
    for axis in (0, 1):
        texture = (texture + np.roll(texture, 4, axis) + np.roll(texture, -4, axis)) / 3
    light = np.linspace(-30, 30, w)[None, :, None] + np.linspace(-20, 20, h)[:, None, None]
    return texture + light


def frame(k: int, t: int, state: np.ndarray, size: tuple[int, int] = FRONT,
          texture: np.ndarray | None = None, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The front and wrist frames; with ``texture`` (:func:`scene`) the front background is textured and ``rng``
    adds sensor noise (2 levels), as a camera's frames are."""
    h, w = size
    s = h * 12 // 64  # the square's side: 12 pixels at the default 64 x 64
    front = np.full((h, w, 3), (40 + 20 * k, 60, 90), np.uint8)
    if texture is not None and rng is not None:
        front = np.clip(front + texture + rng.normal(0, 2, front.shape), 0, 255).astype(np.uint8)
    y, x = int((state[0] + 1) / 2 * (h - s)), int((state[1] + 1) / 2 * (w - s))
    front[y:y + s, x:x + s] = (220, 40, 40) if k % 2 == 0 else (40, 40, 220)
    wrist = np.zeros((*WRIST, 3), np.uint8)
    wrist[:, : (4 + 3 * t) % WRIST[1]] = (200, 180, 30)
    return front, wrist


def write(out: Path, front_size: tuple[int, int] = FRONT, lengths: Sequence[int] = LENGTHS, textured: bool = False) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if out.exists():
        shutil.rmtree(out)
    ds = LeRobotDataset.create(REPO_ID, fps=FPS, features=features(front_size), root=out, robot_type="so101_like",
                               use_videos=True)
    rng = np.random.default_rng(0)
    camera_rng = np.random.default_rng(1)  # its own stream: the default fixture's states and actions stay as they were
    texture = scene(front_size, camera_rng) if textured else None
    for k, length in enumerate(lengths):
        state = rng.uniform(-0.8, 0.8, 6).astype(np.float32)
        for t in range(length):
            action = np.clip(state + rng.normal(0, 0.1, 6), -1, 1).astype(np.float32)
            front, wrist = frame(k, t, state, front_size, texture, camera_rng)
            ds.add_frame({"observation.state": state, "observation.images.front": front, "observation.images.wrist": wrist,
                          "action": action, "next.reward": np.float32([t == length - 1]), "task": TASKS[k % 2]})
            state = action
        ds.save_episode()
    ds.finalize()


def dump(out: Path) -> None:
    """Every frame as LeRobot's loader returns it (cameras as uint8 (H, W, C))."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(REPO_ID, root=out, video_backend="pyav")
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


def time_loader(out: Path, seconds: float) -> dict:
    """Samples/s of ``LeRobotDataset.__getitem__`` (pyav backend) at random indices, as a training loader asks."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(REPO_ID, root=out, video_backend="pyav")
    rng = np.random.default_rng(0)
    ds[0]  # warm up: opens the files
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 5:
        ds[int(rng.integers(len(ds)))]
        n += 1
    elapsed = time.perf_counter() - t0
    return {"samples_per_s": n / elapsed, "samples": n, "seconds": elapsed, "frames": len(ds),
            "video_keys": ds.meta.video_keys, "camera_keys": ds.meta.camera_keys, "video_backend": "pyav"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="the dataset folder to write (replaced if it exists)")
    parser.add_argument("--front-size", type=int, nargs=2, default=FRONT, metavar=("H", "W"),
                        help="the front (video) camera's height and width")
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS, help="frames per episode")
    parser.add_argument("--textured", action="store_true",
                        help="a textured background and sensor noise on the front camera (video decodes as a camera's)")
    parser.add_argument("--no-dump", action="store_true", help="skip OUT.loaded.npz and OUT.loaded.json")
    parser.add_argument("--time-loader", type=float, default=0.0, metavar="SECONDS",
                        help="time LeRobot's per-sample loading for about SECONDS; print one JSON line")
    args = parser.parse_args()
    write(args.out, tuple(args.front_size), args.lengths, args.textured)
    if not args.no_dump:
        dump(args.out)
    print(f"wrote {args.out}" + ("" if args.no_dump else f" and {args.out}.loaded.npz"))
    if args.time_loader > 0:
        print(json.dumps(time_loader(args.out, args.time_loader)))
