"""EpisodeStore: exact round trips, appends, leftovers after interrupted writes, verify naming bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from omnipolicy.datasets import DatasetError, Episode, EpisodeStore
from omnipolicy.datasets import store as store_mod
from omnipolicy.datasets.cli import dataset_info, verify_dataset
from omnipolicy.tokenizers import FieldSpec, TimestepSpec


def test_round_trip_every_modality(tmp_path: Path, make_episode, assert_same, everything_spec) -> None:
    eps = [make_episode(s) for s in range(5)]
    store = EpisodeStore(tmp_path / "ds")
    assert store.append_episodes(eps[:2]) == [0, 1]
    assert store.append_episodes(eps[2:]) == [2, 3, 4]
    store.close()
    again = EpisodeStore(tmp_path / "ds")
    assert again.num_episodes == 5 and again.num_frames == sum(e.length for e in eps)
    assert again.task_ids == ["toy/everything-v0"] and again.timestep_spec("toy/everything-v0") == everything_spec
    for i, ep in enumerate(eps):
        assert_same(ep, again.load_episode(i))
    assert again.seeds("toy/everything-v0") == set(range(5))
    np.testing.assert_allclose(again.returns(), [e.episode_return for e in eps], rtol=1e-6)


def test_lerobot_layout_and_metadata(tmp_path: Path, make_episode) -> None:
    store = EpisodeStore(tmp_path / "ds", fps=15)
    eps = [make_episode(s, length=4) for s in range(3)]
    store.append_episodes(eps)
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 15
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 12, 1)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["splits"] == {"train": "0:3"}
    feats = info["features"]
    assert feats["observation.images.image"] == {"dtype": "image", "shape": [20, 24, 3], "names": ["height", "width", "channels"]}
    assert feats["observation.state"]["dtype"] == "float64" and feats["observation.state"]["shape"] == [5]
    assert feats["observation.lives"]["shape"] == [1] and feats["action"]["shape"] == [2]
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index", "next.reward", "next.done"):
        assert key in feats
    data = pq.read_table(tmp_path / "ds/data/chunk-000/file-000.parquet")
    assert data.column_names == list(feats)
    assert data["index"].to_pylist() == list(range(12))
    assert data["episode_index"].to_pylist() == [0] * 4 + [1] * 4 + [2] * 4
    np.testing.assert_allclose(data["timestamp"].to_numpy()[:4], np.arange(4) / 15, rtol=1e-6)
    assert data["next.done"].to_pylist() == [False, False, False, True] * 3
    img = data["observation.images.image"][0].as_py()
    assert img["bytes"][:8] == b"\x89PNG\r\n\x1a\n" and img["path"] is None
    meta = pq.read_table(tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet")
    assert meta["dataset_from_index"].to_pylist() == [0, 4, 8] and meta["dataset_to_index"].to_pylist() == [4, 8, 12]
    assert meta["tasks"].to_pylist() == [["Do everything at once."]] * 3
    assert meta["data/chunk_index"].to_pylist() == [0, 0, 0] and meta["meta/episodes/file_index"].to_pylist() == [0, 0, 0]
    assert "stats/observation.state/mean" in meta.column_names
    tasks = pq.read_table(tmp_path / "ds/meta/tasks.parquet")
    assert tasks["task"].to_pylist() == ["Do everything at once."] and tasks["task_index"].to_pylist() == [0]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())
    allstate = np.concatenate([e.observations["state"] for e in eps])
    np.testing.assert_allclose(stats["observation.state"]["mean"], allstate.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["observation.state"]["std"], allstate.std(0), rtol=1e-9)
    np.testing.assert_allclose(stats["observation.state"]["max"], allstate.max(0))
    assert stats["observation.state"]["count"] == [12]
    assert np.asarray(stats["observation.images.image"]["mean"]).shape == (3, 1, 1)


def test_data_files_roll_over_and_stay_readable(tmp_path: Path, make_episode, assert_same) -> None:
    store = EpisodeStore(tmp_path / "ds", data_file_size_mb=0.004)  # a few KB: every append starts a new file
    eps = [make_episode(s, length=6) for s in range(6)]
    for ep in eps:
        store.append_episodes([ep])
    assert len(store.data_files()) > 2
    for i, ep in enumerate(eps):
        assert_same(ep, store.load_episode(i))
    assert verify_dataset(tmp_path / "ds").ok


def test_rejects_mismatched_episodes(tmp_path: Path, make_episode) -> None:
    store = EpisodeStore(tmp_path / "ds")
    bad = make_episode(0, length=4)
    bad.observations["state"] = bad.observations["state"][:, :3]
    with pytest.raises(ValueError, match=r"field 'state' has shape \(4, 3\), expected \(4, 5\)"):
        store.append_episodes([bad])
    store.append_episodes([make_episode(1)])
    other = TimestepSpec((FieldSpec("state", "continuous", (4,), "float32"),), FieldSpec("action", "discrete", (), "int64", n=2))
    ep = Episode("toy/other-v0", {"state": np.zeros((3, 4), np.float32)}, np.zeros(3, np.int64), np.zeros(3), spec=other)
    with pytest.raises(ValueError, match="store this task in its own folder"):
        store.append_episodes([ep])
    assert EpisodeStore(tmp_path / "ds").num_episodes == 1


def test_second_writer_is_refused(tmp_path: Path, make_episode) -> None:
    a = EpisodeStore(tmp_path / "ds")
    a.append_episodes([make_episode(0)])
    b = EpisodeStore(tmp_path / "ds")
    with pytest.raises(DatasetError, match="another process is writing"):
        b.append_episodes([make_episode(1)])
    a.close()
    b.append_episodes([make_episode(1)])
    assert EpisodeStore(tmp_path / "ds").num_episodes == 2


@pytest.mark.parametrize("crash_at", range(6))
def test_interrupted_append_at_every_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int, make_episode,
                                           assert_same) -> None:
    """A crash before the k-th file write of an append leaves the previous commit, and the next writer continues."""
    root = tmp_path / "ds"
    base = [make_episode(s) for s in range(3)]
    store = EpisodeStore(root)
    store.append_episodes(base[:2])
    store.append_episodes(base[2:])
    store.close()

    writes = {"n": 0}
    real_parquet, real_json = store_mod.write_parquet_atomic, store_mod.write_json_atomic

    def counted(real):
        def wrapper(*args, **kwargs):
            if writes["n"] == crash_at:
                raise KeyboardInterrupt("simulated crash")
            writes["n"] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(store_mod, "write_parquet_atomic", counted(real_parquet))
    monkeypatch.setattr(store_mod, "write_json_atomic", counted(real_json))
    new = [make_episode(10 + s, task_id="toy/everything-v0") for s in range(2)]
    crashed = EpisodeStore(root)
    try:
        crashed.append_episodes(new)
        completed = True
    except KeyboardInterrupt:
        completed = False
    crashed.close()
    monkeypatch.undo()

    reader = EpisodeStore(root)
    assert reader.num_episodes == (5 if completed else 3)
    for i, ep in enumerate(base + new[: reader.num_episodes - 3]):
        assert_same(ep, reader.load_episode(i))
    report = verify_dataset(root)
    assert report.ok, report.errors
    writer = EpisodeStore(root)
    outcome = writer.recover()
    have = writer.num_episodes
    assert have in (3, 5) and (have == 5) == (completed or outcome["adopted"] == 2)
    writer.append_episodes([make_episode(99)])
    final = EpisodeStore(root)
    assert final.num_episodes == have + 1 and final.load_episode(have).seed == 99
    assert final.seeds("toy/everything-v0") >= {0, 1, 2, 99}
    clean = verify_dataset(root)
    assert clean.ok and not clean.warnings, (clean.errors, clean.warnings)


def test_orphan_files_are_removed_and_tmp_files_ignored(tmp_path: Path, make_episode) -> None:
    root = tmp_path / "ds"
    store = EpisodeStore(root)
    store.append_episodes([make_episode(0)])
    store.close()
    orphan = root / "data/chunk-000/file-007.parquet"
    shutil.copy(root / "data/chunk-000/file-000.parquet", orphan)
    tmp = root / "meta/.info.json.abc.tmp"
    tmp.write_text("{")
    report = verify_dataset(root)
    assert report.ok and any("file-007.parquet" in w for w in report.warnings)
    writer = EpisodeStore(root)
    assert writer.recover()["removed_files"] == 2
    assert not orphan.exists() and not tmp.exists()


def test_verify_names_truncated_and_corrupted_files(tmp_path: Path, make_episode) -> None:
    root = tmp_path / "ds"
    store = EpisodeStore(root)
    store.append_episodes([make_episode(s, length=8) for s in range(4)])
    store.close()
    assert verify_dataset(root).ok
    data = root / "data/chunk-000/file-000.parquet"
    good = data.read_bytes()
    data.write_bytes(good[: len(good) // 2])
    report = verify_dataset(root)
    assert not report.ok and str(data) in report.errors[0] and "truncated" in report.errors[0]
    blob = bytearray(good)
    blob[len(blob) // 3] ^= 0x20
    data.write_bytes(bytes(blob))
    report = verify_dataset(root)
    assert not report.ok and any(str(data) in e for e in report.errors)
    data.write_bytes(good)
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    meta.write_bytes(meta.read_bytes()[:50])
    report = verify_dataset(root)
    assert not report.ok and str(meta) in report.errors[0]
    with pytest.raises(DatasetError, match="file-000.parquet: not a readable parquet file"):
        EpisodeStore(root)


def test_verify_and_info_commands(tmp_path: Path, capsys: pytest.CaptureFixture, make_episode) -> None:
    from omnipolicy.commands import dataset_command

    root = tmp_path / "out" / "toy" / "everything-v0"
    store = EpisodeStore(root)
    eps = [make_episode(s, length=5) for s in range(3)]
    store.append_episodes(eps)
    store.close()
    info = dataset_info(root)
    t = info["tasks"]["toy/everything-v0"]
    assert (info["episodes"], info["frames"], t["episodes"]) == (3, 15, 3)
    assert t["return_mean"] == pytest.approx(np.mean([e.episode_return for e in eps]), rel=1e-5)
    assert t["success_rate"] == pytest.approx(1 / 3)
    dataset_command(["verify", str(tmp_path / "out")], prog="omnipolicy dataset")
    assert "OK" in capsys.readouterr().out
    dataset_command(["info", str(tmp_path / "out")], prog="omnipolicy dataset")
    assert "3 episodes, 15 frames" in capsys.readouterr().out
    data = root / "data/chunk-000/file-000.parquet"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(SystemExit) as exit_info:
        dataset_command(["verify", str(tmp_path / "out")], prog="omnipolicy dataset")
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert f"error: {data}: not a readable parquet file" in out and "Traceback" not in out


def test_docstring_examples() -> None:
    import doctest

    from omnipolicy.datasets import cache, loader

    for module in (store_mod, cache, loader):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
    assert doctest.testmod(store_mod).attempted > 0
