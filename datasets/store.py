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
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omnipolicy.files import atomic_path, write_json_atomic
from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec

CODEBASE_VERSION = "v3.0"
FORMAT_VERSION = 1
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
INFO_PATH = "meta/info.json"
IMPORT_NOTES_PATH = "meta/rosbag_imports.json"
"""Where an import (``omnipolicy dataset from-rosbag``) notes what it could not record: reward and success sources."""
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
LOCK_NAME = ".omnipolicy-write.lock"
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_MB = 32
DEFAULT_FPS = 30
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
IMAGE_STATS_FRAMES = 16

DEFAULT_FEATURES: dict[str, dict] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
STEP_FEATURES: dict[str, dict] = {
    "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    "next.done": {"dtype": "bool", "shape": [1], "names": None},
}
_DATA_RE = re.compile(r"chunk-(\d{3,})/file-(\d{3,})\.parquet$")


class DatasetError(RuntimeError):
    """A dataset on disk is missing, inconsistent or corrupted (the message names the file)."""


# ----------------------------------------------------------------------------------------------------------
# Episodes


@dataclass
class Episode:
    """One demonstration: T observations, the T actions taken after them and the T rewards that followed.

    Attributes:
        task_id: registry id of the task (e.g. ``"metaworld/reach-v3"``).
        observations: field name -> values with a leading time axis T (images uint8 (T, H, W, C), vectors
            (T, *shape), discrete ints (T, *shape), text: a sequence of T strings).
        actions: (T, *action.shape) in the action's dtype.
        rewards: (T,) reward received after each action.
        success: whether the episode solved the task (None where the task has no success signal).
        seed: the reset seed that produced the episode (collection skips seeds already stored).
        terminated: True when the episode ended in a terminal state, False when it was truncated.
        spec: the task's timestep spec; needed only the first time a task is appended to a store.
        instruction: natural-language task description (LeRobot's ``task``); defaults to the task id.
    """

    task_id: str
    observations: dict[str, Any]
    actions: np.ndarray
    rewards: np.ndarray
    success: bool | None = None
    seed: int | None = None
    terminated: bool = False
    spec: TimestepSpec | None = field(default=None, repr=False)
    instruction: str | None = None

    @property
    def length(self) -> int:
        """Number of timesteps T."""
        return int(len(self.rewards))

    @property
    def episode_return(self) -> float:
        """Undiscounted sum of rewards."""
        return float(np.sum(np.asarray(self.rewards, dtype=np.float64)))


@dataclass
class PreparedEpisode:
    """An episode already converted to Arrow columns (PNG-encoded) with its stats.

    Built by :func:`prepare_episode`, which collection workers call so that PNG encoding and statistics run
    in parallel; :meth:`EpisodeStore.append_episodes` takes these or plain :class:`Episode` objects.
    """

    task_id: str
    spec: TimestepSpec
    instruction: str
    length: int
    columns: dict[str, pa.Array]  # feature key -> (T,) array, without the index columns
    stats: dict[str, dict[str, np.ndarray]]
    episode_return: float
    success: bool | None
    seed: int | None
    terminated: bool


# ----------------------------------------------------------------------------------------------------------
# Feature mapping: TimestepSpec field <-> LeRobot feature


def _safe(name: str) -> str:
    return name.replace("/", ".")


def feature_key(f: FieldSpec) -> str:
    """LeRobot feature name of one observation field (``observation.state``, ``observation.images.image``)."""
    return f"observation.images.{_safe(f.name)}" if f.kind == "image" else f"observation.{_safe(f.name)}"


def _feature(f: FieldSpec) -> dict:
    if f.kind == "image":
        return {"dtype": "image", "shape": list(f.shape), "names": ["height", "width", "channels"]}
    if f.kind == "text":
        return {"dtype": "string", "shape": [1], "names": None}
    return {"dtype": np.dtype(f.dtype).name, "shape": list(f.shape) or [1], "names": None}


def spec_features(spec: TimestepSpec) -> tuple[dict[str, dict], dict[str, str]]:
    """LeRobot features of a task and the column of each observation field.

    Returns:
        ``(features, columns)``: feature key -> ``{dtype, shape, names}`` (observations, action, next.*, then
        LeRobot's default index features), and field name -> feature key (``"action"`` for the action).

    Raises:
        ValueError: two fields map to the same feature key.
    """
    features: dict[str, dict] = {}
    columns: dict[str, str] = {}
    for f in sorted(spec.observation, key=lambda f: f.name):
        key = feature_key(f)
        if key in features:
            raise ValueError(f"Observation fields {f.name!r} and another field both map to column {key!r}")
        features[key], columns[f.name] = _feature(f), key
    features["action"] = _feature(spec.action)
    columns["action"] = "action"
    features.update(json.loads(json.dumps(STEP_FEATURES)))
    features.update(json.loads(json.dumps(DEFAULT_FEATURES)))
    return features, columns


def _arrow_type(ft: dict) -> pa.DataType:
    if ft["dtype"] == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if ft["dtype"] == "string":
        return pa.string()
    t = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
    if list(ft["shape"]) == [1]:
        return t
    for n in reversed(ft["shape"]):
        t = pa.list_(t, int(n))
    return t


def data_schema(features: Mapping[str, dict]) -> pa.Schema:
    """Arrow schema of the data files for LeRobot features."""
    return pa.schema([(k, _arrow_type(ft)) for k, ft in features.items()])


def _tensor_column(values: np.ndarray, shape: Sequence[int]) -> pa.Array:
    """(T, *shape) -> scalar column when shape is () / (1,) else nested fixed-size lists."""
    values = np.ascontiguousarray(values)
    if len(shape) == 0 or list(shape) == [1]:
        return pa.array(values.reshape(len(values)))
    arr: pa.Array = pa.array(values.reshape(-1))
    for n in reversed(shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(n))
    return arr


def _column_to_numpy(col: pa.Array | pa.ChunkedArray, f: FieldSpec) -> np.ndarray:
    """Inverse of :func:`_tensor_column` (with the field's exact dtype and shape)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = len(col)
    while pa.types.is_fixed_size_list(col.type):
        col = col.flatten()
    return col.to_numpy(zero_copy_only=False).astype(f.dtype, copy=False).reshape((t, *f.shape))


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of one uint8 (H, W, C) image, C in (1, 3)."""
    from PIL import Image

    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """uint8 (H, W, C) array of PNG bytes (C from ``shape``)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("L" if shape[-1] == 1 else "RGB"))
    return arr.reshape(shape)


def _image_column(frames: np.ndarray) -> pa.Array:
    encoded = [encode_png(frame) for frame in frames]
    return pa.StructArray.from_arrays(
        [pa.array(encoded, pa.binary()), pa.nulls(len(encoded), pa.string())], names=["bytes", "path"]
    )


# ----------------------------------------------------------------------------------------------------------
# Statistics (LeRobot's stats.json / episode stats: min, max, mean, std, count, quantiles)


def _numeric_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """min, max, mean, std, count and the QUANTILES (numpy's "linear" method) per element."""
    v = np.sort(values.reshape(len(values), -1).astype(np.float64), axis=0)  # (T, D)
    n = len(v)
    mean = v.mean(0)
    out = {"min": v[0], "max": v[-1], "mean": mean, "std": np.sqrt(np.mean((v - mean) ** 2, axis=0)), "count": np.array([n])}
    pos = np.asarray(QUANTILES) * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo)[:, None]
    vals = v[lo] + (v[hi] - v[lo]) * frac  # (len(QUANTILES), D)
    for q, val in zip(QUANTILES, vals):
        out[f"q{int(round(q * 100)):02d}"] = val
    return out


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    step = max(1, len(frames) // IMAGE_STATS_FRAMES)
    sample = frames[::step].astype(np.float64) / 255.0  # (t, H, W, C)
    flat = sample.reshape(-1, sample.shape[-1])  # (t*H*W, C)
    out = _numeric_stats(flat)
    out = {k: (v if k == "count" else v.reshape(-1, 1, 1)) for k, v in out.items()}  # (C, 1, 1) like LeRobot
    out["count"] = np.array([len(sample)])
    return out


def aggregate_stats(stats: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Combine per-episode stats: exact min/max/mean/std/count, count-weighted mean of quantiles (as LeRobot)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in sorted({k for s in stats for k in s}):
        parts = [s[key] for s in stats if key in s]
        n = np.array([float(p["count"][0]) for p in parts])
        w = (n / n.sum()).reshape((-1,) + (1,) * np.ndim(parts[0]["mean"]))
        means = np.stack([p["mean"] for p in parts])
        mean = (w * means).sum(0)
        var = (w * (np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2)).sum(0)
        agg = {
            "min": np.min([p["min"] for p in parts], axis=0),
            "max": np.max([p["max"] for p in parts], axis=0),
            "mean": mean,
            "std": np.sqrt(var),
            "count": np.array([int(n.sum())]),
        }
        for q in parts[0]:
            if q.startswith("q"):
                agg[q] = (w * np.stack([p[q] for p in parts])).sum(0)
        out[key] = agg
    return out


# ----------------------------------------------------------------------------------------------------------
# Preparing an episode (runs in collection workers)


def _check_episode(ep: Episode, spec: TimestepSpec) -> int:
    t = len(np.asarray(ep.rewards).reshape(-1))
    if t == 0:
        raise ValueError(f"Episode of {ep.task_id!r} has no timesteps")
    names = {f.name for f in spec.observation}
    if set(ep.observations) != names:
        raise ValueError(
            f"Episode of {ep.task_id!r}: observation keys {sorted(ep.observations)} do not match the spec's "
            f"{sorted(names)}"
        )
    for f in spec.observation:
        value = ep.observations[f.name]
        if f.kind == "text":
            if len(value) != t or not all(isinstance(s, str) for s in value):
                raise ValueError(f"Episode of {ep.task_id!r}: text field {f.name!r} needs {t} strings")
            continue
        arr = np.asarray(value)
        if arr.shape != (t, *f.shape):
            raise ValueError(
                f"Episode of {ep.task_id!r}: field {f.name!r} has shape {arr.shape}, expected {(t, *f.shape)}"
            )
        if f.kind == "image" and arr.dtype != np.uint8:
            raise ValueError(f"Episode of {ep.task_id!r}: image {f.name!r} must be uint8, got {arr.dtype}")
    actions = np.asarray(ep.actions)
    if actions.shape != (t, *spec.action.shape):
        raise ValueError(
            f"Episode of {ep.task_id!r}: actions have shape {actions.shape}, expected {(t, *spec.action.shape)}"
        )
    return t


def prepare_episode(ep: Episode, spec: TimestepSpec | None = None) -> PreparedEpisode:
    """Validate an episode against its spec and convert it to Arrow columns (PNG-encoded) with stats.

    Raises:
        ValueError: keys, shapes or dtypes differ from the spec, or no spec is known.
    """
    spec = spec or ep.spec
    if spec is None:
        raise ValueError(f"Episode of {ep.task_id!r} carries no TimestepSpec and none was given")
    t = _check_episode(ep, spec)
    features, columns = spec_features(spec)
    cols: dict[str, pa.Array] = {}
    stats: dict[str, dict[str, np.ndarray]] = {}
    for f in spec.observation:
        key, value = columns[f.name], ep.observations[f.name]
        if f.kind == "image":
            frames = np.ascontiguousarray(value)
            cols[key], stats[key] = _image_column(frames), _image_stats(frames)
        elif f.kind == "text":
            cols[key] = pa.array([str(s) for s in value], pa.string())
        else:
            arr = np.asarray(value, dtype=f.dtype)
            cols[key], stats[key] = _tensor_column(arr, f.shape), _numeric_stats(arr)
    actions = np.asarray(ep.actions, dtype=spec.action.dtype)
    cols["action"], stats["action"] = _tensor_column(actions, spec.action.shape), _numeric_stats(actions)
    rewards = np.asarray(ep.rewards, dtype=np.float32).reshape(t)
    done = np.zeros(t, dtype=bool)
    done[-1] = True
    cols["next.reward"], stats["next.reward"] = pa.array(rewards), _numeric_stats(rewards)
    cols["next.done"], stats["next.done"] = pa.array(done), _numeric_stats(done)
    return PreparedEpisode(
        task_id=ep.task_id,
        spec=spec,
        instruction=ep.instruction if ep.instruction else ep.task_id,
        length=t,
        columns=cols,
        stats=stats,
        episode_return=ep.episode_return,
        success=None if ep.success is None else bool(ep.success),
        seed=None if ep.seed is None else int(ep.seed),
        terminated=bool(ep.terminated),
    )


# ----------------------------------------------------------------------------------------------------------
# Parquet files, written atomically (omnipolicy.files: temporary file, fsync, os.replace, fsync of the folder)


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary encoding: text and the per-frame episode/task indices (floats and PNG bytes are
    not: dictionary encoding them is ~10x slower and makes files larger)."""
    text = (pa.string(), pa.large_string(), pa.list_(pa.string()))
    return [f.name for f in schema if f.type in text or f.name in ("episode_index", "task_index")]


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    """Write a parquet file atomically (snappy like LeRobot, with page CRCs)."""
    with atomic_path(path) as tmp:
        pq.write_table(
            table, tmp, compression="snappy", write_page_checksum=True, use_dictionary=_dictionary_columns(table.schema)
        )


def read_parquet(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a parquet file, checking page CRCs; any failure becomes a :class:`DatasetError` naming the file."""
    try:
        return pq.read_table(path, columns=columns, page_checksum_verification=True)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file is missing") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        size = path.stat().st_size if path.exists() else 0
        raise DatasetError(f"{path}: not a readable parquet file ({size} bytes; truncated or corrupted?): {exc}") from None


def _array_bytes(arr: pa.Array) -> Iterator[bytes]:
    """Canonical bytes of an Arrow array's values (independent of chunking, offsets and file encoding)."""
    if pa.types.is_fixed_size_list(arr.type):
        yield from _array_bytes(arr.flatten())
    elif pa.types.is_struct(arr.type):
        for i in range(arr.type.num_fields):
            yield from _array_bytes(arr.field(i))
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        yield np.asarray(arr.value_lengths().fill_null(-1), np.int64).tobytes()
        yield from _array_bytes(arr.flatten())
    elif pa.types.is_binary(arr.type) or pa.types.is_string(arr.type) or pa.types.is_large_binary(arr.type):
        values = arr.to_pylist()
        yield np.asarray([-1 if v is None else len(v) for v in values], np.int64).tobytes()
        for v in values:
            if v is not None:
                yield v.encode() if isinstance(v, str) else v
    else:
        if arr.null_count:
            yield arr.is_null().to_numpy(zero_copy_only=False).tobytes()
            arr = arr.fill_null(pa.scalar(0).cast(arr.type))
        yield arr.to_numpy(zero_copy_only=False).tobytes()


def rows_digest(table: pa.Table) -> str:
    """Checksum of a table's contents (column names and values), the same in memory and after a parquet round trip."""
    h = hashlib.blake2b(digest_size=16)
    for name in table.column_names:
        h.update(name.encode() + b"\0")
        for chunk in _array_bytes(table[name].combine_chunks()):
            h.update(chunk)
    return h.hexdigest()


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


def _stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def _list_array(values: list[np.ndarray], kind: str) -> pa.Array:
    data = [np.asarray(v).tolist() for v in values]
    if kind == "count":
        return pa.array(data, pa.list_(pa.int64()))
    depth = np.ndim(values[0])
    t: pa.DataType = pa.float64()
    for _ in range(depth):
        t = pa.list_(t)
    return pa.array(data, t)


def is_store(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a committed dataset (``meta/info.json``)."""
    return (Path(path) / INFO_PATH).is_file()


def find_stores(path: str | os.PathLike) -> list[Path]:
    """Dataset roots at or below ``path`` (a store itself, or a folder of stores such as ``collect --out``)."""
    root = Path(path)
    if is_store(root):
        return [root]
    return sorted(p.parent.parent for p in root.rglob(INFO_PATH) if p.parent.name == "meta")


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
                obs[f.name] = _column_to_numpy(col, f)
        return Episode(
            task_id=task_id,
            observations=obs,
            actions=_column_to_numpy(rows["action"], spec.action),
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
        write_json_atomic(self.root / STATS_PATH, _stats_to_json(stats))
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
            write_json_atomic(self.root / STATS_PATH, _stats_to_json(self.committed_stats()))

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


def read_import_notes(root: str | Path) -> list[dict[str, Any]]:
    """The import notes of a dataset (:data:`IMPORT_NOTES_PATH`), only for committed episodes; [] if none."""
    path = Path(root) / IMPORT_NOTES_PATH
    if not path.is_file() or not (Path(root) / INFO_PATH).is_file():
        return []
    total = json.loads((Path(root) / INFO_PATH).read_text()).get("total_episodes", 0)
    return [n for n in json.loads(path.read_text()) if all(i < total for i in n["episodes"])]
