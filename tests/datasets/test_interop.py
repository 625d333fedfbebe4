"""LeRobot reads our datasets: ``lerobot``'s own ``LeRobotDataset`` loads collected data, frame for frame.

lerobot 0.4.4 pins torch<2.11 and pulls several GB, so it lives in its own virtual environment
(``make test-interop`` builds ``.venv-lerobot``); this test runs its loader there in a subprocess and compares
what it returns with :class:`EpisodeStore`. Set ``OMNIPOLICY_LEROBOT_PYTHON`` to use another interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from omnipolicy.datasets import Episode, EpisodeStore
from omnipolicy.datasets.collect import collect
from omnipolicy.tokenizers import FieldSpec, TimestepSpec

pytestmark = pytest.mark.interop
REPO = Path(__file__).resolve().parents[2]
# absolute, not resolved: the venv's python is a symlink, and the probe runs from /
LEROBOT_PYTHON = Path(os.path.abspath(os.environ.get("OMNIPOLICY_LEROBOT_PYTHON",
                                                    REPO / ".venv-lerobot" / "bin" / "python")))

# Runs under .venv-lerobot: load with LeRobotDataset and dump every frame.
READER = r'''
import json, sys
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

root, out = sys.argv[1], sys.argv[2]
meta = LeRobotDatasetMetadata("omnipolicy/interop", root=root)
ds = LeRobotDataset("omnipolicy/interop", root=root)
arrays, strings = {}, {"task": []}
for i in range(len(ds)):
    item = ds[i]
    strings["task"].append(item["task"])
    for key, value in item.items():
        if isinstance(value, str):
            strings.setdefault(key, []).append(value)
        elif hasattr(value, "numpy"):
            v = value.numpy()
            if key in meta.camera_keys:  # (C, H, W) float in [0, 1] -> (H, W, C) uint8
                v = np.round(v * 255).astype(np.uint8).transpose(1, 2, 0)
            arrays.setdefault(key, []).append(v)
fps = meta.fps
ds_delta = LeRobotDataset("omnipolicy/interop", root=root, delta_timestamps={"action": [0.0, 1 / fps, 2 / fps]})
first = meta.episodes[0]["dataset_to_index"] - 1  # last frame of episode 0: the future is padded
window = ds_delta[first]
arrays["delta_action"] = [window["action"].numpy()]
arrays["delta_pad"] = [window["action_is_pad"].numpy()]
np.savez(out + ".npz", **{k: np.stack(v) for k, v in arrays.items()})
json.dump({"strings": strings, "total_episodes": meta.total_episodes, "total_frames": meta.total_frames,
           "num_frames": ds.num_frames, "camera_keys": meta.camera_keys, "fps": fps,
           "stats_keys": sorted(meta.stats)}, open(out + ".json", "w"))
'''

SPEC = TimestepSpec(
    (FieldSpec("front", "image", (24, 40, 3), "uint8"), FieldSpec("depth", "image", (16, 16, 1), "uint8"),
     FieldSpec("state", "continuous", (6,), "float64"), FieldSpec("instruction", "text", (), "str")),
    FieldSpec("action", "discrete", (1,), "int64", n=5),
)


def _pixel_store(root: Path) -> Path:
    store = EpisodeStore(root, fps=20)
    rng = np.random.default_rng(0)
    eps = []
    for e, t in enumerate([7, 11, 5]):
        eps.append(Episode("toy/pixels-v0", {
            "front": rng.integers(0, 256, (t, 24, 40, 3), dtype=np.uint8),
            "depth": rng.integers(0, 256, (t, 16, 16, 1), dtype=np.uint8),
            "state": rng.normal(size=(t, 6)),
            "instruction": [f"frame {i}" for i in range(t)]},
            rng.integers(0, 5, (t, 1)), rng.normal(size=t), seed=e, spec=SPEC, instruction="Watch and act."))
    store.append_episodes(eps[:2])
    store.append_episodes(eps[2:])  # two commits: LeRobot must see the appended episode too
    store.close()
    return root


def _read_with_lerobot(root: Path, tmp: Path) -> tuple[dict, dict]:
    out = tmp / root.name
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp / "hf-cache"),
               HF_LEROBOT_HOME=str(tmp / "lerobot-home"))
    env.pop("PYTHONPATH", None)
    # cwd outside the repository: its `datasets/` folder would shadow Hugging Face's `datasets` package
    proc = subprocess.run([str(LEROBOT_PYTHON), "-c", READER, str(root), str(out)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(np.load(str(out) + ".npz")), json.loads(Path(str(out) + ".json").read_text())


@pytest.fixture(scope="module")
def lerobot_python() -> Path:
    if not LEROBOT_PYTHON.exists():
        pytest.skip(f"{LEROBOT_PYTHON} missing: run `make test-interop` to build the lerobot environment")
    probe = subprocess.run([str(LEROBOT_PYTHON), "-c", "import lerobot.datasets.lerobot_dataset"], capture_output=True,
                           text=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"{LEROBOT_PYTHON} cannot import lerobot: {probe.stderr.strip().splitlines()[-1:]}")
    return LEROBOT_PYTHON


def _compare(root: Path, arrays: dict, meta: dict) -> None:
    store = EpisodeStore(root)
    assert meta["total_episodes"] == store.num_episodes and meta["num_frames"] == store.num_frames
    tid = store.task_ids[0]
    spec = store.timestep_spec(tid)
    columns = store.info["omnipolicy"]["tasks"][tid]["columns"]
    start = 0
    for i in range(store.num_episodes):
        ep = store.load_episode(i)
        sl = slice(start, start + ep.length)
        np.testing.assert_array_equal(arrays["episode_index"][sl], i)
        np.testing.assert_array_equal(arrays["frame_index"][sl], np.arange(ep.length))
        np.testing.assert_array_equal(arrays["index"][sl], np.arange(sl.start, sl.stop))
        np.testing.assert_allclose(arrays["timestamp"][sl], np.arange(ep.length) / meta["fps"], rtol=1e-6)
        np.testing.assert_array_equal(arrays["action"][sl].reshape(ep.actions.shape), ep.actions)
        np.testing.assert_array_equal(arrays["next.reward"][sl], np.asarray(ep.rewards, np.float32))
        assert meta["strings"]["task"][sl] == [store.instruction(tid)] * ep.length
        for f in spec.observation:
            key = columns[f.name]
            if f.kind == "text":
                assert meta["strings"][key][sl] == list(ep.observations[f.name])
            else:
                got = arrays[key][sl]
                want = ep.observations[f.name]
                if want.dtype == np.float64:  # stored as float64; LeRobot's torch.tensor(list) gives float32
                    want = want.astype(np.float32)
                np.testing.assert_array_equal(got.reshape(want.shape), want)
                if f.kind != "image":
                    assert got.dtype == want.dtype, (key, got.dtype, want.dtype)
        start += ep.length
    # delta timestamps stop at the episode's end (LeRobot's padding uses our dataset_from/to_index)
    ep0 = store.load_episode(0)
    np.testing.assert_array_equal(arrays["delta_pad"][0], [False, True, True])
    np.testing.assert_array_equal(arrays["delta_action"][0][0].reshape(ep0.actions.shape[1:]), ep0.actions[-1])
    assert "action" in meta["stats_keys"]


def test_lerobot_loads_collected_state_tasks(lerobot_python: Path, tmp_path: Path) -> None:
    pytest.importorskip("metaworld")
    out = tmp_path / "demos"
    collect(["classic/cartpole-v1", "metaworld/reach-v3"], 2, out, workers=0, progress=False)
    for task_id in ("classic/cartpole-v1", "metaworld/reach-v3"):
        root = out.joinpath(*task_id.split("/"))
        arrays, meta = _read_with_lerobot(root, tmp_path)
        _compare(root, arrays, meta)


def test_lerobot_loads_images_text_and_appends(lerobot_python: Path, tmp_path: Path) -> None:
    root = _pixel_store(tmp_path / "pixels")
    arrays, meta = _read_with_lerobot(root, tmp_path)
    assert sorted(meta["camera_keys"]) == ["observation.images.depth", "observation.images.front"]
    _compare(root, arrays, meta)


def test_we_read_a_dataset_the_installed_lerobot_writes(lerobot_python: Path, tmp_path: Path) -> None:
    """A fresh fixture from the installed LeRobot's own writer (video camera, PNG camera, two tasks): our reader's
    frames equal LeRobot's own loader's, frame for frame, and the import trains-ready store holds them all."""
    pytest.importorskip("av")
    from omnipolicy.datasets.lerobot import LeRobotSource, import_lerobot, infer_spec

    root = tmp_path / "fresh"
    proc = subprocess.run([str(lerobot_python), str(REPO / "scripts" / "make_lerobot_fixture.py"), str(root)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    theirs = dict(np.load(str(root) + ".loaded.npz"))
    tasks = json.loads(Path(str(root) + ".loaded.json").read_text())["task"]
    source = LeRobotSource(root)
    spec, _ = infer_spec(source)
    episodes = [source.read(ref, spec, "lerobot/fresh") for ref in source]
    for name, key in (("front", "observation.images.front"), ("wrist", "observation.images.wrist"),
                      ("state", "observation.state")):
        np.testing.assert_array_equal(np.concatenate([e.observations[name] for e in episodes]), theirs[key])
    np.testing.assert_array_equal(np.concatenate([e.actions for e in episodes]), theirs["action"])
    assert [t for e in episodes for t in e.observations["instruction"]] == tasks
    summary = import_lerobot(root, tmp_path / "store", progress=False)
    assert summary["frames"] == len(theirs["action"]) and EpisodeStore(tmp_path / "store").num_episodes == len(episodes)
