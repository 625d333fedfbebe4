"""Episode store in the LeRobotDataset v3 layout, crash-safe, written with pyarrow.

On disk (``root/``), exactly what LeRobot's ``LeRobotDataset(repo_id, root=root)`` reads::

    meta/info.json                                    format, fps, features, totals, path templates, splits
    meta/stats.json                                   per-feature min/max/mean/std/count/quantiles
    meta/tasks.parquet                                task string (index) -> task_index
    meta/episodes/chunk-000/file-000.parquet          one row per episode: length, data file, index range, stats
    data/chunk-000/file-000.parquet                   one row per frame: observation.*, action, next.*, indices

Images are PNG bytes in a ``struct<bytes, path>`` column (the Hugging Face ``Image`` feature). Each task's
:class:`~omnipolicy.tokenizers.TimestepSpec` is kept in ``info.json["omnipolicy"]`` with the column of every
field, so :meth:`EpisodeStore.load_episode` gives back observation dicts with the exact keys, dtypes, shapes
and text that were written.

Crash safety. ``meta/info.json`` is the commit record: an episode exists once ``total_episodes`` counts it.
An append writes every other file first (a temporary file in the same folder, fsync, ``os.replace``, fsync of
the folder) and replaces ``info.json`` last. Data and episode files only ever grow by rewriting the whole
file with the committed rows plus the new ones, so committed rows never move. A SIGKILL at any moment
therefore leaves either the old or the new commit, both loadable; rows or files past the commit are
leftovers that readers ignore and the next writer adopts (when complete) or removes.

>>> import tempfile
>>> from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec
>>> spec = TimestepSpec((FieldSpec("state", "continuous", (2,), "float32"),),
...                     FieldSpec("action", "discrete", (), "int64", n=3))
>>> store = EpisodeStore(tempfile.mkdtemp())
>>> ep = Episode("toy/task-v0", {"state": np.zeros((5, 2), np.float32)}, np.ones(5, np.int64),
...              np.ones(5, np.float32), spec=spec, seed=7)
>>> store.append_episodes([ep])
[0]
>>> store.load_episode(0).observations["state"].shape, store.load_episode(0).episode_return
((5, 2), 5.0)
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omnipolicy.files import write_json_atomic
from omnipolicy.tokenizers.spec import TimestepSpec

from .episode import Episode, PreparedEpisode, prepare_episode
from .images import decode_png
from .layout import (
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    FORMAT_VERSION,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    DatasetError,
)
from .parquet import read_parquet, rows_digest, write_parquet_atomic
from .schema import DEFAULT_FEATURES, column_to_numpy, data_schema, spec_features
from .stats import QUANTILES, aggregate_stats, stats_to_json

LOCK_NAME = ".omnipolicy-write.lock"
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_MB = 32
DEFAULT_FPS = 30
_DATA_RE = re.compile(r"chunk-(\d{3,})/file-(\d{3,})\.parquet$")


# ----------------------------------------------------------------------------------------------------------
# Tasks parquet (pandas-compatible: the task string is the DataFrame index, as LeRobot's load_tasks expects)


def _tasks_table(tasks: Sequence[tuple[str, str]]) -> pa.Table:
    """tasks: [(task string, task id)] in task_index order."""
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "task_id": pa.array([tid for _, tid in tasks], pa.string()),
            "task": pa.array([text for text, _ in tasks], pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}
        ],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "task_id", "field_name": "task_id", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


# ----------------------------------------------------------------------------------------------------------
# The store


def _file_index(k: int, chunks_size: int) -> tuple[int, int]:
    return k // chunks_size, k % chunks_size


def _list_array(values: list[np.ndarray], kind: str) -> pa.Array:
    data = [np.asarray(v).tolist() for v in values]
    if kind == "count":
        return pa.array(data, pa.list_(pa.int64()))
    depth = np.ndim(values[0])
    t: pa.DataType = pa.float64()
    for _ in range(depth):
        t = pa.list_(t)
    return pa.array(data, t)


class EpisodeStore:
    """Episodes of one or more tasks (with one shared set of LeRobot features) in a LeRobotDataset v3 folder.

    Reading never changes files. The first append takes a write lock (``fcntl.flock`` on
    ``root/.omnipolicy-write.lock``, released by the kernel if the process dies) and recovers what an
    interrupted writer left (see the module docstring).

    Args:
        root: dataset folder; created on the first append.
        fps: frames per second recorded for a new dataset (LeRobot's ``timestamp = frame_index / fps``).
        data_file_size_mb: data files grow until this size, then a new file starts.
        chunks_size: files per ``chunk-XXX`` folder.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fps: int = DEFAULT_FPS,
        data_file_size_mb: float = DEFAULT_DATA_FILE_SIZE_MB,
        chunks_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.root = Path(root)
        self._new_fps = int(fps)
        self._file_size_mb = float(data_file_size_mb)
        self._chunks_size = int(chunks_size)
        self._lock_fh: io.BufferedRandom | None = None
        self._recovered = False
        self._table_cache: tuple[Path, pa.Table] | None = None
        self._stats_cache: tuple[str, dict] | None = None  # (episodes checksum, aggregated stats of those episodes)
        self.refresh()

    # -- reading -------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the committed state from disk (info.json first, then the episode rows it commits)."""
        self._table_cache = None
        info_path = self.root / INFO_PATH
        if not info_path.is_file():
            self.info: dict = {}
            self._episodes = pa.table({})
            self._specs: dict[str, TimestepSpec] = {}
            return
        try:
            self.info = json.loads(info_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{info_path}: not valid JSON: {exc}") from None
        if self.info.get("codebase_version") != CODEBASE_VERSION or "omnipolicy" not in self.info:
            raise DatasetError(
                f"{info_path}: expected a LeRobot {CODEBASE_VERSION} dataset written by omnipolicy, got "
                f"codebase_version={self.info.get('codebase_version')!r}"
            )
        self._specs = {tid: TimestepSpec.from_dict(t["spec"]) for tid, t in self.info["omnipolicy"]["tasks"].items()}
        total = int(self.info["total_episodes"])
        tables = []
        for k in range(int(self.info["omnipolicy"]["episodes_files"])):
            path = self.root / EPISODES_PATH.format(**dict(zip(("chunk_index", "file_index"), _file_index(k, self.chunks_size))))
            tables.append(read_parquet(path))
        episodes = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
        if total:
            idx = episodes["episode_index"].to_numpy()
            keep = np.flatnonzero(idx < total)
            episodes = episodes.take(keep)
            if not np.array_equal(episodes["episode_index"].to_numpy(), np.arange(total)):
                raise DatasetError(
                    f"{self.root / 'meta/episodes'}: committed episode rows are not 0..{total - 1} in order "
                    f"(found {len(keep)} rows)"
                )
        self._episodes = episodes

    @property
    def chunks_size(self) -> int:
        return int(self.info.get("chunks_size", self._chunks_size))

    @property
    def num_episodes(self) -> int:
        """Committed episodes."""
        return int(self.info.get("total_episodes", 0))

    @property
    def num_frames(self) -> int:
        """Committed frames (timesteps)."""
        return int(self.info.get("total_frames", 0))

    @property
    def fps(self) -> int:
        return int(self.info.get("fps", self._new_fps))

    @property
    def task_ids(self) -> list[str]:
        """Task ids in task_index order."""
        tasks = self.info.get("omnipolicy", {}).get("tasks", {})
        return sorted(tasks, key=lambda t: tasks[t]["task_index"])

    def timestep_spec(self, task_id: str) -> TimestepSpec:
        """The TimestepSpec stored for a task.

        Raises:
            KeyError: the store has no episodes of that task.
        """
        if task_id not in self._specs:
            raise KeyError(f"Task {task_id!r} is not in {self.root}; tasks are {self.task_ids}")
        return self._specs[task_id]

    def instruction(self, task_id: str) -> str:
        """The task string stored for a task (LeRobot's ``task``)."""
        self.timestep_spec(task_id)
        return self.info["omnipolicy"]["tasks"][task_id]["instruction"]

    def episode_table(self) -> pa.Table:
        """One row per committed episode (LeRobot columns plus task_id, seed, success, episode_return)."""
        return self._episodes

    def episode_task(self, index: int) -> str:
        return str(self._episodes["task_id"][index].as_py())

    def episode_length(self, index: int) -> int:
        return int(self._episodes["length"][index].as_py())

    def episodes_of(self, task_id: str) -> list[int]:
        """Episode indices of one task."""
        if not self.num_episodes:
            return []
        return np.flatnonzero(np.asarray(self._episodes["task_id"].to_pylist()) == task_id).tolist()

    def seeds(self, task_id: str) -> set[int]:
        """Reset seeds of the stored episodes of a task."""
        if not self.num_episodes:
            return set()
        rows = self._episodes.select(["task_id", "seed"]).to_pylist()
        return {r["seed"] for r in rows if r["task_id"] == task_id and r["seed"] is not None}

    def rejected_seeds(self, task_id: str) -> set[int]:
        """Seeds that collection rolled out and filtered away (kept so a rerun does not roll them again)."""
        return set(self.info.get("omnipolicy", {}).get("rejected_seeds", {}).get(task_id, []))

    def returns(self, task_id: str | None = None) -> np.ndarray:
        """Episode returns (of one task, or all)."""
        if not self.num_episodes:
            return np.zeros(0)
        ret = self._episodes["episode_return"].to_numpy()
        return ret if task_id is None else ret[self.episodes_of(task_id)]

    def data_files(self) -> list[Path]:
        """Committed data files in order."""
        if not self.num_episodes:
            return []
        last = self._episodes.num_rows - 1
        k_last = self._k(self._episodes["data/chunk_index"][last].as_py(), self._episodes["data/file_index"][last].as_py())
        return [self._data_path(k) for k in range(k_last + 1)]

    def episodes_files(self) -> list[Path]:
        """Committed episode-metadata files in order."""
        return [self._episodes_path(k) for k in range(int(self.info.get("omnipolicy", {}).get("episodes_files", 0)))]

    def _k(self, chunk: int, file: int) -> int:
        return int(chunk) * self.chunks_size + int(file)

    def _data_path(self, k: int) -> Path:
        c, f = _file_index(k, self.chunks_size)
        return self.root / DATA_PATH.format(chunk_index=c, file_index=f)

    def _episodes_path(self, k: int) -> Path:
        c, f = _file_index(k, self.chunks_size)
        return self.root / EPISODES_PATH.format(chunk_index=c, file_index=f)

    def _read_data(self, path: Path) -> pa.Table:
        if self._table_cache is None or self._table_cache[0] != path:
            self._table_cache = (path, read_parquet(path))
        return self._table_cache[1]

    def episode_rows(self, index: int) -> pa.Table:
        """The data rows (frames) of one committed episode, as stored."""
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"Episode {index} out of range; {self.root} has {self.num_episodes} episodes")
        row = self._episodes.slice(index, 1).to_pylist()[0]
        path = self.root / DATA_PATH.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        table = self._read_data(path)
        first = table["index"][0].as_py() if table.num_rows else 0
        lo, hi = row["dataset_from_index"] - first, row["dataset_to_index"] - first
        rows = table.slice(lo, hi - lo)
        if hi > table.num_rows or rows.num_rows != row["length"] or rows["episode_index"][0].as_py() != index:
            raise DatasetError(
                f"{path}: rows {row['dataset_from_index']}..{row['dataset_to_index']} of episode {index} are missing "
                f"or belong to another episode (file has {table.num_rows} rows from index {first})"
            )
        return rows

    def load_episode(self, index: int) -> Episode:
        """Episode ``index`` with observations in the exact keys, dtypes and shapes of its task's spec."""
        rows = self.episode_rows(index)
        meta = self._episodes.slice(index, 1).to_pylist()[0]
        task_id = meta["task_id"]
        spec = self._specs[task_id]
        columns = self.info["omnipolicy"]["tasks"][task_id]["columns"]
        obs: dict[str, Any] = {}
        for f in spec.observation:
            col = rows[columns[f.name]]
            if f.kind == "image":
                obs[f.name] = np.stack([decode_png(b, f.shape) for b in col.combine_chunks().field("bytes").to_pylist()])
            elif f.kind == "text":
                obs[f.name] = [str(s) for s in col.to_pylist()]
            else:
                obs[f.name] = column_to_numpy(col, f)
        return Episode(
            task_id=task_id,
            observations=obs,
            actions=column_to_numpy(rows["action"], spec.action),
            rewards=rows["next.reward"].to_numpy(),
            success=meta.get("success"),
            seed=meta.get("seed"),
            terminated=bool(meta.get("terminated")),
            spec=spec,
            instruction=self.info["omnipolicy"]["tasks"][task_id]["instruction"],
        )

    def __len__(self) -> int:
        return self.num_episodes

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.num_episodes):
            yield self.load_episode(i)

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.root)!r}, episodes={self.num_episodes}, frames={self.num_frames}, tasks={self.task_ids})"

    # -- writing -------------------------------------------------------------------------------------------

    def _lock(self) -> None:
        if self._lock_fh is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / LOCK_NAME, "a+b")  # noqa: SIM115 (held for the life of the writer)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise DatasetError(f"{self.root}: another process is writing this dataset (lock {LOCK_NAME} is held)") from None
        self._lock_fh = fh

    def close(self) -> None:
        """Release the write lock (reading keeps working)."""
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None
            self._recovered = False

    def __enter__(self) -> "EpisodeStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _leftover_files(self) -> list[Path]:
        """Temporary files and data / episode files past the committed ones."""
        committed = set(self.data_files()) | set(self.episodes_files())
        out = [p for p in self.root.rglob(".*.tmp") if p.is_file()]
        for sub in ("data", "meta/episodes"):
            for p in (self.root / sub).glob("chunk-*/file-*.parquet"):
                if p not in committed:
                    out.append(p)
        return sorted(out)

    def leftovers(self) -> dict[str, list[str]]:
        """What an interrupted writer left: ``{"files": [...], "rows": [...]}`` (relative paths), for verify."""
        files = [str(p.relative_to(self.root)) for p in self._leftover_files()]
        rows = []
        tails = self.data_files()[-1:] + self.episodes_files()[-1:]
        for p in tails:
            try:
                n = pq.read_metadata(p).num_rows
            except Exception:  # noqa: BLE001 (verify reports unreadable files separately)
                continue
            expect = self._committed_rows(p)
            if n > expect:
                rows.append(f"{p.relative_to(self.root)}: {n - expect} rows past the commit")
        return {"files": files, "rows": rows}

    def _committed_rows(self, path: Path) -> int:
        ep = self._episodes
        if path.is_relative_to(self.root / "data"):
            m = _DATA_RE.search(str(path))
            k = self._k(int(m.group(1)), int(m.group(2)))
            ks = np.asarray(ep["data/chunk_index"].to_numpy() * self.chunks_size + ep["data/file_index"].to_numpy())
            return int(ep["length"].to_numpy()[ks == k].sum())
        m = _DATA_RE.search(str(path))
        k = self._k(int(m.group(1)), int(m.group(2)))
        ks = np.asarray(
            ep["meta/episodes/chunk_index"].to_numpy() * self.chunks_size + ep["meta/episodes/file_index"].to_numpy()
        )
        return int((ks == k).sum())

    def recover(self) -> dict[str, int]:
        """Take the write lock and clean up after an interrupted writer.

        Uncommitted episodes whose metadata row and data rows were both fully written are adopted (committed);
        everything else past the commit is removed (files deleted, tail files rewritten without the extra rows).

        Returns:
            ``{"adopted": episodes adopted, "removed_files": n, "dropped_rows": n}``.
        """
        self._lock()
        self.refresh()
        adopted = self._adopt()
        removed, dropped = 0, 0
        for p in self._leftover_files():
            p.unlink()
            removed += 1
        for p in self.data_files()[-1:] + self.episodes_files()[-1:]:
            if not p.exists():
                continue
            keep = self._committed_rows(p)
            if pq.read_metadata(p).num_rows > keep:
                table = read_parquet(p)
                dropped += table.num_rows - keep
                write_parquet_atomic(p, table.slice(0, keep))
        for d in ("data", "meta/episodes"):
            for chunk in sorted((self.root / d).glob("chunk-*")):
                if chunk.is_dir() and not any(chunk.iterdir()):
                    chunk.rmdir()
        self._recovered = True
        self._table_cache = None
        return {"adopted": adopted, "removed_files": removed, "dropped_rows": dropped}

    def _adopt(self) -> int:
        """Commit complete episodes written past the commit (metadata row present and data rows intact)."""
        if not self.info:
            return 0
        total, frames = self.num_episodes, self.num_frames
        n_files = int(self.info["omnipolicy"]["episodes_files"])
        candidates = []
        for k in (n_files - 1, n_files):
            p = self._episodes_path(k)
            if k < 0 or not p.exists():
                continue
            try:
                t = pq.read_table(p)
            except Exception:  # noqa: BLE001 (an unreadable leftover is removed, not adopted)
                continue
            candidates.append((k, t.filter(pc.greater_equal(t["episode_index"], total))))
        rows = pa.concat_tables([t for _, t in candidates], promote_options="default").to_pylist() if candidates else []
        rows.sort(key=lambda r: r["episode_index"])
        adopted = []
        for r in rows:
            if r["episode_index"] != total + len(adopted) or r["dataset_from_index"] != frames:
                break
            path = self.root / DATA_PATH.format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
            try:
                data = pq.read_table(path, columns=["index", "episode_index"])
            except Exception:  # noqa: BLE001
                break
            idx = data["index"].to_numpy()
            sel = (idx >= r["dataset_from_index"]) & (idx < r["dataset_to_index"])
            if sel.sum() != r["length"] or not np.all(data["episode_index"].to_numpy()[sel] == r["episode_index"]):
                break
            if r["task_id"] not in self.info["omnipolicy"]["tasks"]:
                break  # its task was never committed: the spec is unknown
            adopted.append(r)
            frames = r["dataset_to_index"]
        if not adopted:
            return 0
        k_last = max(self._k(r["meta/episodes/chunk_index"], r["meta/episodes/file_index"]) for r in adopted)
        self.info["total_episodes"] = total + len(adopted)
        self.info["total_frames"] = frames
        self.info["omnipolicy"]["episodes_files"] = max(n_files, k_last + 1)
        self.info["splits"] = {"train": f"0:{self.info['total_episodes']}"}
        meta = pa.concat_tables([self._episodes, pa.Table.from_pylist(adopted, schema=self._episodes.schema)])
        self.info["omnipolicy"]["episodes_checksum"] = rows_digest(meta)
        self._commit()
        return len(adopted)

    def _register_tasks(self, prepared: Sequence[PreparedEpisode]) -> dict:
        """Add unseen tasks to the (uncommitted) info; returns the new info dict."""
        info = json.loads(json.dumps(self.info)) if self.info else {}
        for p in prepared:
            features, columns = spec_features(p.spec)
            if not info:
                info = {
                    "codebase_version": CODEBASE_VERSION,
                    "robot_type": None,
                    "total_episodes": 0,
                    "total_frames": 0,
                    "total_tasks": 0,
                    "chunks_size": self._chunks_size,
                    "data_files_size_in_mb": int(round(self._file_size_mb)),
                    "video_files_size_in_mb": 200,
                    "fps": self._new_fps,
                    "splits": {},
                    "data_path": DATA_PATH,
                    "video_path": None,
                    "features": features,
                    "omnipolicy": {"format_version": FORMAT_VERSION, "tasks": {}, "episodes_files": 0, "rejected_seeds": {}},
                }
            tasks = info["omnipolicy"]["tasks"]
            if p.task_id in tasks:
                stored = TimestepSpec.from_dict(tasks[p.task_id]["spec"])
                if stored != p.spec:
                    raise ValueError(
                        f"Task {p.task_id!r}: episode spec differs from the one stored in {self.root}: "
                        f"{p.spec.to_dict()} != {stored.to_dict()}"
                    )
                continue
            if features != info["features"]:
                raise ValueError(
                    f"Task {p.task_id!r} has LeRobot features {sorted(features)} with shapes/dtypes that differ from "
                    f"this dataset's {sorted(info['features'])} ({self.root}); a LeRobot dataset has one schema, so "
                    f"store this task in its own folder (`omnipolicy collect` writes one folder per task)"
                )
            text = p.instruction
            if text in {t["instruction"] for t in tasks.values()}:
                text = f"{text} ({p.task_id})"
            tasks[p.task_id] = {"task_index": len(tasks), "instruction": text, "spec": p.spec.to_dict(), "columns": columns}
            info["total_tasks"] = len(tasks)
        return info

    def append_episodes(
        self, episodes: Sequence[Episode | PreparedEpisode], rejected_seeds: Mapping[str, Sequence[int]] | None = None
    ) -> list[int]:
        """Append episodes atomically: after a crash either all of them are in the store or none is.

        Args:
            episodes: plain or prepared episodes (a task's spec must come with its first episode).
            rejected_seeds: task id -> seeds rolled out but filtered away, recorded in the same commit.

        Returns:
            The episode indices given to the new episodes.

        Raises:
            ValueError: an episode does not match its spec, or its features differ from the dataset's.
            DatasetError: another process holds the write lock, or committed files are unreadable.
        """
        if not self._recovered:
            self.recover()
        prepared = [e if isinstance(e, PreparedEpisode) else prepare_episode(e, e.spec or self._specs.get(e.task_id)) for e in episodes]
        if not prepared and not rejected_seeds:
            return []
        info = self._register_tasks(prepared)
        if rejected_seeds:
            rej = info["omnipolicy"].setdefault("rejected_seeds", {})
            for tid, seeds in rejected_seeds.items():
                rej[tid] = sorted(set(rej.get(tid, [])) | {int(s) for s in seeds})
        if not prepared:
            self._write_info(info)
            return []
        chunks_size = int(info["chunks_size"])
        ep0, frame0 = int(info["total_episodes"]), int(info["total_frames"])
        task_index = {tid: t["task_index"] for tid, t in info["omnipolicy"]["tasks"].items()}

        # 1. tasks (new task rows are harmless before the commit: task_index never changes)
        if len(info["omnipolicy"]["tasks"]) != len(self.info.get("omnipolicy", {}).get("tasks", {})):
            order = sorted(info["omnipolicy"]["tasks"].items(), key=lambda kv: kv[1]["task_index"])
            write_parquet_atomic(self.root / TASKS_PATH, _tasks_table([(t["instruction"], tid) for tid, t in order]))

        # 2. data: committed rows of the tail file + new rows, or a new file once the tail is full
        features = info["features"]
        new_data = self._data_table(prepared, features, ep0, frame0, task_index, float(info["fps"]))
        k_data, base = 0, None
        if self.num_episodes:
            last = self._episodes.num_rows - 1
            k_data = self._k(self._episodes["data/chunk_index"][last].as_py(), self._episodes["data/file_index"][last].as_py())
            tail = self._data_path(k_data)
            if tail.stat().st_size < self._file_size_mb * 2**20:
                base = read_parquet(tail)
                base = base.slice(0, self._committed_rows(tail))
            else:
                k_data += 1
        table = pa.concat_tables([base, new_data]) if base is not None else new_data
        write_parquet_atomic(self._data_path(k_data), table)

        # 3. episode metadata rows, same rule (these files stay small: one row per episode)
        n_files = int(info["omnipolicy"]["episodes_files"])
        k_meta = max(n_files - 1, 0)
        meta_base = None
        if n_files:
            tail = self._episodes_path(k_meta)
            if tail.stat().st_size < self._file_size_mb * 2**20:
                meta_base = read_parquet(tail)
                meta_base = meta_base.slice(0, self._committed_rows(tail))
            else:
                k_meta += 1
        starts = np.cumsum([0] + [p.length for p in prepared])
        digests = [rows_digest(new_data.slice(int(a), int(b - a))) for a, b in zip(starts[:-1], starts[1:])]
        meta_new = self._episodes_table(prepared, ep0, frame0, k_data, k_meta, chunks_size, info, digests)
        meta_table = pa.concat_tables([meta_base, meta_new], promote_options="default") if meta_base is not None else meta_new
        write_parquet_atomic(self._episodes_path(k_meta), meta_table)

        # 4. stats over every committed + new episode; 5. info.json: the commit
        info["total_episodes"] = ep0 + len(prepared)
        info["total_frames"] = frame0 + sum(p.length for p in prepared)
        info["omnipolicy"]["episodes_files"] = k_meta + 1
        info["splits"] = {"train": f"0:{info['total_episodes']}"}
        all_meta = pa.concat_tables([self._episodes, meta_new], promote_options="default") if self.num_episodes else meta_new
        info["omnipolicy"]["episodes_checksum"] = rows_digest(all_meta)
        stats = aggregate_stats([self.committed_stats(), *self._stats_of(meta_new)])
        write_json_atomic(self.root / STATS_PATH, stats_to_json(stats))
        self._write_info(info)
        self._stats_cache = (info["omnipolicy"]["episodes_checksum"], stats)
        return list(range(ep0, ep0 + len(prepared)))

    def _write_info(self, info: dict) -> None:
        write_json_atomic(self.root / INFO_PATH, info)
        self.refresh()

    def _commit(self) -> None:
        """Write stats and info for the current in-memory info (used by recovery)."""
        self._write_info(self.info)
        if self.num_episodes:
            write_json_atomic(self.root / STATS_PATH, stats_to_json(self.committed_stats()))

    def committed_stats(self) -> dict[str, dict[str, np.ndarray]]:
        """Aggregated statistics of the committed episodes (from their metadata rows; cached per commit)."""
        key = self.info.get("omnipolicy", {}).get("episodes_checksum", "")
        if self._stats_cache is None or self._stats_cache[0] != key:
            self._stats_cache = (key, aggregate_stats(self._stats_of(self._episodes)) if self.num_episodes else {})
        return self._stats_cache[1]

    @staticmethod
    def _stats_of(meta: pa.Table) -> list[dict[str, dict[str, np.ndarray]]]:
        cols = [c for c in meta.column_names if c.startswith("stats/")]
        per_key: dict[str, dict[str, list]] = {}
        for c in cols:
            _, key, stat = c.split("/")
            per_key.setdefault(key, {})[stat] = meta[c].to_pylist()
        out = []
        for i in range(meta.num_rows):
            ep = {}
            for key, stats in per_key.items():
                if all(v[i] is not None for v in stats.values()):
                    ep[key] = {s: np.asarray(v[i], dtype=np.int64 if s == "count" else np.float64) for s, v in stats.items()}
            out.append(ep)
        return out

    @staticmethod
    def _data_table(
        prepared: Sequence[PreparedEpisode], features: Mapping[str, dict], ep0: int, frame0: int,
        task_index: Mapping[str, int], fps: float,
    ) -> pa.Table:
        schema = data_schema(features)
        tables = []
        start = frame0
        for i, p in enumerate(prepared):
            t = p.length
            frame = np.arange(t, dtype=np.int64)
            cols = dict(p.columns)
            cols["timestamp"] = pa.array((frame / fps).astype(np.float32))
            cols["frame_index"] = pa.array(frame)
            cols["episode_index"] = pa.array(np.full(t, ep0 + i, np.int64))
            cols["index"] = pa.array(np.arange(start, start + t, dtype=np.int64))
            cols["task_index"] = pa.array(np.full(t, task_index[p.task_id], np.int64))
            tables.append(pa.Table.from_arrays([cols[name] for name in schema.names], schema=schema))
            start += t
        return pa.concat_tables(tables)

    def _episodes_table(
        self, prepared: Sequence[PreparedEpisode], ep0: int, frame0: int, k_data: int, k_meta: int,
        chunks_size: int, info: dict, digests: Sequence[str],
    ) -> pa.Table:
        n = len(prepared)
        lengths = np.array([p.length for p in prepared], np.int64)
        ends = frame0 + np.cumsum(lengths)
        dc, df = _file_index(k_data, chunks_size)
        mc, mf = _file_index(k_meta, chunks_size)
        tasks = info["omnipolicy"]["tasks"]
        cols: dict[str, pa.Array] = {
            "episode_index": pa.array(np.arange(ep0, ep0 + n, dtype=np.int64)),
            "tasks": pa.array([[tasks[p.task_id]["instruction"]] for p in prepared], pa.list_(pa.string())),
            "length": pa.array(lengths),
            "data/chunk_index": pa.array(np.full(n, dc, np.int64)),
            "data/file_index": pa.array(np.full(n, df, np.int64)),
            "dataset_from_index": pa.array(ends - lengths),
            "dataset_to_index": pa.array(ends),
            "meta/episodes/chunk_index": pa.array(np.full(n, mc, np.int64)),
            "meta/episodes/file_index": pa.array(np.full(n, mf, np.int64)),
            "task_id": pa.array([p.task_id for p in prepared], pa.string()),
            "seed": pa.array([p.seed for p in prepared], pa.int64()),
            "success": pa.array([p.success for p in prepared], pa.bool_()),
            "episode_return": pa.array([p.episode_return for p in prepared], pa.float64()),
            "terminated": pa.array([p.terminated for p in prepared], pa.bool_()),
            "checksum": pa.array(list(digests), pa.string()),
        }
        for key in info["features"]:
            if key in DEFAULT_FEATURES or info["features"][key]["dtype"] == "string":
                continue
            for stat in ("min", "max", "mean", "std", "count") + tuple(f"q{int(round(q * 100)):02d}" for q in QUANTILES):
                cols[f"stats/{key}/{stat}"] = _list_array([p.stats[key][stat] for p in prepared], stat)
        return pa.table(cols)
