"""datasets/lerobot.py: LeRobot-written datasets (v3.0 and v2.1, video cameras) read as LeRobot's own loader reads
them, imported into an episode store, and clear errors for broken ones.

``tests/data/lerobot_so101_v30`` was written by LeRobot 0.4.4's own code (``scripts/make_lerobot_fixture.py`` in the
``make test-interop`` environment): an arm not in the task registry, an AV1 video camera, a PNG camera, two
tasks, four episodes; ``lerobot_so101_v30.loaded.npz`` is what LeRobot's ``LeRobotDataset`` returned for every frame.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omnipolicy.datasets import EpisodeStore
from omnipolicy.datasets.layout import DatasetError
from omnipolicy.datasets.lerobot import LeRobotSource, import_lerobot, infer_spec

av = pytest.importorskip("av")

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "lerobot_so101_v30"
TASK = "lerobot/so101_fixture"


def _lerobot_loaded() -> tuple[dict[str, np.ndarray], list[str]]:
    arrays = dict(np.load(str(FIXTURE) + ".loaded.npz"))
    return arrays, json.loads(Path(str(FIXTURE) + ".loaded.json").read_text())["task"]


def _read_all(root: Path) -> dict[str, np.ndarray | list]:
    source = LeRobotSource(root)
    spec, _ = infer_spec(source)
    episodes = [source.read(ref, spec, TASK) for ref in source]
    out: dict = {name: np.concatenate([e.observations[name] for e in episodes]) for name in ("state", "front", "wrist")}
    out["action"] = np.concatenate([e.actions for e in episodes])
    out["instruction"] = [t for e in episodes for t in e.observations["instruction"]]
    return out


def test_frames_equal_lerobots_own_loader() -> None:
    ours = _read_all(FIXTURE)
    theirs, tasks = _lerobot_loaded()
    assert len(ours["front"]) == len(theirs["observation.images.front"]) == 46
    np.testing.assert_array_equal(ours["front"], theirs["observation.images.front"])  # decoded AV1, frame for frame
    np.testing.assert_array_equal(ours["wrist"], theirs["observation.images.wrist"])  # PNG in the rows
    np.testing.assert_array_equal(ours["state"], theirs["observation.state"])
    np.testing.assert_array_equal(ours["action"], theirs["action"])
    assert ours["instruction"] == tasks and set(tasks) == {"pick up the red cube", "push the blue cube to the zone"}


def test_spec_inferred_from_the_features() -> None:
    source = LeRobotSource(FIXTURE)
    spec, notes = infer_spec(source, image_size=(32, 32))
    fields = {f.name: f for f in spec.observation}
    assert set(fields) == {"state", "front", "wrist", "instruction"}
    assert fields["front"].shape == fields["wrist"].shape == (32, 32, 3) and fields["instruction"].kind == "text"
    joints = ("shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos")
    assert fields["state"].names == spec.action.names == joints
    stats = json.loads((FIXTURE / "meta" / "stats.json").read_text())["action"]
    np.testing.assert_allclose(spec.action.low, np.asarray(stats["min"]), atol=1e-6)
    assert any("action bounds" in n and "stats.json" in n for n in notes)
    unbounded, notes = infer_spec(source, action_bounds="none")
    assert unbounded.action.low is None and any("none" in n for n in notes)


def test_import_then_train_reads_it(tmp_path: Path) -> None:
    summary = import_lerobot(FIXTURE, tmp_path / "store", image_size=(32, 32), progress=False)
    assert summary["episodes"] == 4 and summary["frames"] == 46 and summary["task_id"] == "lerobot/lerobot_so101_v30"
    store = EpisodeStore(tmp_path / "store")
    assert store.num_episodes == 4 and store.seeds(summary["task_id"]) == {0, 1, 2, 3}
    ep = store.load_episode(2)
    theirs, tasks = _lerobot_loaded()
    np.testing.assert_array_equal(ep.actions, theirs["action"][21:35])  # episode 2: rows 21..34
    assert ep.observations["front"].shape == (14, 32, 32, 3) and ep.observations["instruction"][0] == tasks[21]
    again = import_lerobot(FIXTURE, tmp_path / "store", image_size=(32, 32), progress=False)
    assert again["episodes"] == 0 and again["skipped"] == 4 and EpisodeStore(tmp_path / "store").num_episodes == 4

    from omnipolicy.agent import TrainConfig, train  # torch: the model trains on the imported arm's episodes

    result = train(TrainConfig(data=(tmp_path / "store",), out=tmp_path / "run", preset="cpu-tiny", steps=3,
                               batch_size=2, context=64, progress=False, tensorboard=False))
    assert result.step == 3 and all(np.isfinite(result.losses))


def _to_v21(src: Path, dst: Path) -> None:
    """The fixture in LeRobot's v2.1 layout: one data and one video file per episode, episodes.jsonl and tasks.jsonl.

    Each episode's video is the v3.0 file's frames re-encoded losslessly (H.264, qp 0, the decoded YUV planes
    as they are), so the decoded RGB frames stay equal.
    """
    info = json.loads((src / "meta" / "info.json").read_text())
    episodes = pq.read_table(next((src / "meta" / "episodes").glob("*/*.parquet"))).to_pylist()
    data = pq.read_table(src / "data" / "chunk-000" / "file-000.parquet")
    tasks = pq.read_table(src / "meta" / "tasks.parquet").to_pylist()
    (dst / "meta").mkdir(parents=True)
    shutil.copy(src / "meta" / "stats.json", dst / "meta" / "stats.json")
    (dst / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": t["task_index"], "task": t["__index_level_0__"]}) + "\n" for t in tasks))
    (dst / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e["episode_index"], "tasks": e["tasks"], "length": e["length"]}) + "\n" for e in episodes))
    info.update(codebase_version="v2.1", data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
    (dst / "meta" / "info.json").write_text(json.dumps(info, indent=1))
    with av.open(str(src / "videos" / "observation.images.front" / "chunk-000" / "file-000.mp4")) as c:
        planes = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    for e in episodes:
        k, lo, hi = e["episode_index"], e["dataset_from_index"], e["dataset_to_index"]
        rows = data.slice(lo, hi - lo)
        rows = rows.set_column(rows.column_names.index("timestamp"), "timestamp",
                               pa.array(np.arange(hi - lo, dtype=np.float32) / info["fps"]))
        (dst / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, dst / "data" / "chunk-000" / f"episode_{k:06d}.parquet")
        video = dst / "videos" / "chunk-000" / "observation.images.front" / f"episode_{k:06d}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(video), "w") as out:
            stream = out.add_stream("libx264", rate=info["fps"], options={"qp": "0"})
            stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
            for plane in planes[lo:hi]:
                for packet in stream.encode(av.VideoFrame.from_ndarray(plane, format="yuv420p")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)


def test_v21_layout_reads_the_same_frames(tmp_path: Path) -> None:
    _to_v21(FIXTURE, tmp_path / "v21")
    assert LeRobotSource(tmp_path / "v21").version == "v2.1"
    ours, theirs = _read_all(tmp_path / "v21"), _read_all(FIXTURE)
    for key in ("front", "wrist", "state", "action"):
        np.testing.assert_array_equal(ours[key], theirs[key])
    assert ours["instruction"] == theirs["instruction"]


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(FIXTURE, dst)
    return dst


VIDEO = Path("videos") / "observation.images.front" / "chunk-000" / "file-000.mp4"
DATA = Path("data") / "chunk-000" / "file-000.parquet"


def test_corrupt_video_is_named_and_nothing_is_written(copy: Path, tmp_path: Path) -> None:
    raw = (copy / VIDEO).read_bytes()
    (copy / VIDEO).write_bytes(raw[:64] + bytes(len(raw) - 64))
    with pytest.raises(DatasetError, match=r"file-000\.mp4: not a decodable video|file-000\.mp4: no frame"):
        import_lerobot(copy, tmp_path / "store", progress=False)
    assert not (tmp_path / "store" / "meta" / "info.json").exists()  # no half-written store


def test_missing_video_is_named(copy: Path, tmp_path: Path) -> None:
    (copy / VIDEO).unlink()
    with pytest.raises(DatasetError, match=r"file-000\.mp4: video file is missing"):
        import_lerobot(copy, tmp_path / "store", progress=False)


def test_dataset_without_action_is_refused(copy: Path) -> None:
    info = json.loads((copy / "meta" / "info.json").read_text())
    del info["features"]["action"]
    (copy / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info\.json: the features have no 'action'"):
        LeRobotSource(copy)


def test_data_file_without_action_column_is_named(copy: Path) -> None:
    table = pq.read_table(copy / DATA)
    pq.write_table(table.drop_columns(["action"]), copy / DATA)
    source = LeRobotSource(copy)
    spec, _ = infer_spec(source)
    with pytest.raises(DatasetError, match=r"file-000\.parquet: no column\(s\) \['action'\]"):
        source.read(source.episodes[0], spec, TASK)


def test_frame_count_mismatch_is_named(copy: Path) -> None:
    table = pq.read_table(copy / DATA)
    pq.write_table(table.slice(1), copy / DATA)  # episode 0 loses its first row
    source = LeRobotSource(copy)
    spec, _ = infer_spec(source)
    with pytest.raises(DatasetError, match=r"episode 0 has 11 rows, its metadata says 12 frames"):
        source.read(source.episodes[0], spec, TASK)


def test_unknown_version_is_refused(copy: Path) -> None:
    info = json.loads((copy / "meta" / "info.json").read_text())
    info["codebase_version"] = "v1.6"
    (copy / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"codebase_version 'v1.6'; this reader knows \['v3.0', 'v2.1'\]"):
        LeRobotSource(copy)
