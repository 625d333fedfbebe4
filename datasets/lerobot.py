"""Datasets as LeRobot writes them (layouts v3.0 and v2.1, camera streams as mp4 video), read as omnipolicy episodes.

``omnipolicy dataset import`` turns one into an episode store that ``omnipolicy train --data`` reads:

    omnipolicy dataset import ~/.cache/huggingface/lerobot/me/so101_pick --out data/so101_pick --image-size 96 96

What is read:

* ``meta/info.json``: ``codebase_version`` (``v3.0`` or ``v2.1``), ``fps``, the path templates and ``features``;
* the tasks (``meta/tasks.parquet`` in v3.0, ``meta/tasks.jsonl`` in v2.1) and the episodes (``meta/episodes/``
  parquet files with each episode's data file, row range and per-camera video file and start time in v3.0;
  ``meta/episodes.jsonl`` and one data and one video file per episode in v2.1);
* the data rows of each episode and, per video camera, the frame shown at each row's timestamp: the row's
  ``timestamp`` plus the episode's ``from_timestamp`` in its video file (v3.0), matched to the decoded frame
  whose presentation time is nearest, within LeRobot's tolerance (:data:`TOLERANCE_S`). Video is decoded with
  PyAV (its wheel bundles FFmpeg: AV1 through libdav1d, H.264, HEVC). Image features (``dtype: image``) are
  PNG bytes in the rows.

The spec inferred from the features (:func:`infer_spec`): every ``observation.images.*`` camera becomes an
image field named after its last part (optionally resized); other ``observation.*`` vectors become continuous
fields named without the ``observation.`` prefix, keeping the features' element ``names``; integer and bool
features become discrete fields; ``action`` is the continuous action, bounded by the dataset's
``meta/stats.json`` min and max (``action_bounds="stats"``, said in the import's notes) or unbounded (mu-law,
``"none"``); each row's ``task`` string becomes the text field ``instruction``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from tqdm import tqdm

from omnipolicy.files import write_json_atomic
from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec

from .episode import Episode, prepare_episode
from .layout import IMPORT_NOTES_PATH, INFO_PATH, DatasetError, read_import_notes
from .parquet import read_parquet
from .schema import column_to_numpy
from .store import EpisodeStore

SUPPORTED_VERSIONS = ("v3.0", "v2.1")
TOLERANCE_S = 1e-4
"""Largest distance between a row's timestamp and its video frame's (LeRobot's default ``tolerance_s``)."""
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
"""Features every LeRobot dataset has that are not observations."""
INSTRUCTION = "instruction"
"""The text field that carries each row's task string."""


@dataclass(frozen=True)
class EpisodeRef:
    """Where one episode's rows and frames are.

    Attributes:
        index: the episode's ``episode_index``.
        length: its number of frames (rows).
        data: its data file.
        videos: video feature key -> (mp4 file, the episode's first timestamp in it).
    """

    index: int
    length: int
    data: Path
    videos: dict[str, tuple[Path, float]]


class LeRobotSource:
    """A dataset folder written by LeRobot, read episode by episode.

    Args:
        root: the dataset folder (holds ``meta/info.json``).

    Raises:
        DatasetError: not a LeRobot dataset, a version this reader does not know, or metadata that does not
            hold together (each message names the file and what was expected).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        info_path = self.root / INFO_PATH
        if not info_path.is_file():
            raise DatasetError(f"{self.root}: not a LeRobot dataset (no {INFO_PATH})")
        try:
            self.info = json.loads(info_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{info_path}: not valid JSON: {exc}") from None
        self.version = str(self.info.get("codebase_version"))
        if self.version not in SUPPORTED_VERSIONS:
            raise DatasetError(f"{info_path}: codebase_version {self.version!r}; this reader knows "
                               f"{list(SUPPORTED_VERSIONS)} (LeRobot's converters update older datasets)")
        for key in ("fps", "features", "data_path"):
            if key not in self.info:
                raise DatasetError(f"{info_path}: missing {key!r}")
        self.fps = int(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        if "action" not in self.features:
            raise DatasetError(f"{info_path}: the features have no 'action' (found {sorted(self.features)}); "
                               f"a policy learns from the actions")
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.image_keys = [k for k, f in self.features.items() if f.get("dtype") == "image"]
        if self.video_keys and "video_path" not in self.info:
            raise DatasetError(f"{info_path}: video features {self.video_keys} but no 'video_path'")
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes_v30() if self.version == "v3.0" else self._read_episodes_v21()
        stats_path = self.root / "meta" / "stats.json"
        self.stats: dict[str, dict] = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
        self._table: tuple[Path, pa.Table] | None = None
        self._keys = {_field_name(k, ft): k for k, ft in self.features.items()}  # field name -> feature key

    # -- metadata ---------------------------------------------------------------------------------------------

    def _read_tasks(self) -> dict[int, str]:
        if self.version == "v3.0":
            path = self.root / "meta" / "tasks.parquet"
            table = read_parquet(path)
            text_column = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
            if text_column is None or "task_index" not in table.column_names:
                raise DatasetError(f"{path}: expected columns 'task_index' and 'task' (or the pandas index), got "
                                   f"{table.column_names}")
            return dict(zip(table["task_index"].to_pylist(), table[text_column].to_pylist()))
        rows = _jsonl(self.root / "meta" / "tasks.jsonl")
        return {int(r["task_index"]): str(r["task"]) for r in rows}

    def _read_episodes_v30(self) -> list[EpisodeRef]:
        folder = self.root / "meta" / "episodes"
        files = sorted(folder.glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{folder}: no episodes files (chunk-*/file-*.parquet)")
        table = pa.concat_tables([read_parquet(f) for f in files], promote_options="default")
        need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        for key in self.video_keys:
            need += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise DatasetError(f"{folder}: episodes files lack columns {missing}")
        cols = {c: table[c].to_pylist() for c in need}
        refs = []
        for i in range(table.num_rows):
            data = self.root / self.info["data_path"].format(chunk_index=cols["data/chunk_index"][i],
                                                             file_index=cols["data/file_index"][i])
            videos = {key: (self.root / self.info["video_path"].format(
                video_key=key, chunk_index=cols[f"videos/{key}/chunk_index"][i],
                file_index=cols[f"videos/{key}/file_index"][i]), float(cols[f"videos/{key}/from_timestamp"][i]))
                for key in self.video_keys}
            refs.append(EpisodeRef(int(cols["episode_index"][i]), int(cols["length"][i]), data, videos))
        return sorted(refs, key=lambda r: r.index)

    def _read_episodes_v21(self) -> list[EpisodeRef]:
        rows = _jsonl(self.root / "meta" / "episodes.jsonl")
        chunks = int(self.info.get("chunks_size", 1000))
        refs = []
        for r in rows:
            index = int(r["episode_index"])
            chunk = index // chunks
            data = self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=index)
            videos = {key: (self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=key,
                                                                       episode_index=index), 0.0)
                      for key in self.video_keys}
            refs.append(EpisodeRef(index, int(r["length"]), data, videos))
        return sorted(refs, key=lambda r: r.index)

    # -- rows and frames --------------------------------------------------------------------------------------

    def _rows(self, ref: EpisodeRef) -> pa.Table:
        """The episode's data rows, in frame order (a v3.0 data file holds several episodes)."""
        if self._table is None or self._table[0] != ref.data:
            self._table = (ref.data, read_parquet(ref.data))
        table = self._table[1]
        if "episode_index" not in table.column_names:
            raise DatasetError(f"{ref.data}: no 'episode_index' column")
        rows = table.filter(pc.equal(table["episode_index"], ref.index))
        if rows.num_rows != ref.length:
            raise DatasetError(f"{ref.data}: episode {ref.index} has {rows.num_rows} rows, its metadata says "
                               f"{ref.length} frames")
        if "frame_index" in rows.column_names:
            rows = rows.take(pc.sort_indices(rows["frame_index"]))
        return rows

    def read(self, ref: EpisodeRef, spec: TimestepSpec, task_id: str) -> Episode:
        """One episode in ``spec`` (from :func:`infer_spec`): its observations, actions, rewards and success.

        Raises:
            DatasetError: a missing or unreadable data or video file, a missing column, a frame count that does
                not match, a video frame missing at a row's timestamp.
        """
        rows = self._rows(ref)
        missing = [c for c in ("action", "timestamp") if c not in rows.column_names]
        if missing:
            raise DatasetError(f"{ref.data}: no column(s) {missing} (columns: {rows.column_names})")
        timestamps = rows["timestamp"].to_numpy().astype(np.float64)
        observations: dict[str, Any] = {}
        for f in spec.observation:
            key = self._keys.get(f.name, f.name)
            if f.kind == "text":
                indices = rows["task_index"].to_pylist() if "task_index" in rows.column_names else []
                observations[f.name] = [self.tasks.get(int(t), "") for t in indices] or [""] * ref.length
            elif key in self.video_keys:
                path, start = ref.videos[key]
                frames = decode_frames(path, start + timestamps, self.fps)
                observations[f.name] = _resize(frames, f.shape)
            elif key in self.image_keys:
                observations[f.name] = _resize(_png_column(rows[key], ref.data, key), f.shape)
            else:
                observations[f.name] = _column(rows, key, f, ref.data)
        actions = _column(rows, "action", spec.action, ref.data)
        rewards = (_column(rows, "next.reward", FieldSpec("r", "continuous", (), "float64"), ref.data)
                   if "next.reward" in rows.column_names else np.zeros(ref.length))
        success = bool(np.any(rows["next.success"].to_numpy(zero_copy_only=False))) \
            if "next.success" in rows.column_names else None
        done = rows["next.done"].to_pylist() if "next.done" in rows.column_names else []
        task = self.tasks.get(int(rows["task_index"][0].as_py()), task_id) if "task_index" in rows.column_names else task_id
        return Episode(task_id=task_id, observations=observations, actions=actions,
                       rewards=np.asarray(rewards, np.float64).reshape(-1), success=success, seed=ref.index,
                       terminated=bool(done[-1]) if done else False, spec=spec, instruction=task)

    def __iter__(self) -> Iterator[EpisodeRef]:
        return iter(self.episodes)


def infer_spec(source: LeRobotSource, image_size: tuple[int, int] | None = None,
               action_bounds: Literal["stats", "none"] = "stats") -> tuple[TimestepSpec, list[str]]:
    """The :class:`TimestepSpec` of a LeRobot dataset's features, and notes saying each choice made.

    Args:
        source: the dataset.
        image_size: (height, width) every camera is resized to (default: each camera's own size).
        action_bounds: ``"stats"``: the action is bounded by ``meta/stats.json``'s min and max per element (linear
            tokens over that range); ``"none"``: unbounded (mu-law tokens).

    Raises:
        DatasetError: a feature this reader cannot map, or bounds asked for but absent.
    """
    notes: list[str] = []
    fields: list[FieldSpec] = []
    for key, ft in source.features.items():
        if key in BOOKKEEPING or key == "action" or key.startswith("next.") or key == "task":
            continue
        fields.append(_field(_field_name(key, ft), key, ft, image_size, source))
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise DatasetError(f"{source.root / INFO_PATH}: features map to duplicate field names {names}")
    if source.tasks:
        fields.append(FieldSpec(INSTRUCTION, "text", (), "str"))
        notes.append(f"each row's task string is the text field {INSTRUCTION!r} ({len(source.tasks)} task(s))")
    action = _field("action", "action", source.features["action"], None, source)
    if action.kind != "continuous":
        raise DatasetError(f"{source.root / INFO_PATH}: 'action' has dtype {source.features['action'].get('dtype')!r}; "
                           f"expected a float vector")
    if action_bounds == "stats":
        stats = source.stats.get("action", {})
        if "min" not in stats or "max" not in stats:
            raise DatasetError(f"{source.root / 'meta/stats.json'}: no action min/max for the action bounds; "
                               f"import with --action-bounds none (unbounded, mu-law tokens)")
        low = np.asarray(stats["min"], np.float64).reshape(-1)
        high = np.asarray(stats["max"], np.float64).reshape(-1)
        flat = high <= low  # a constant element: widen it so the range is valid
        low, high = np.where(flat, low - 1e-3, low), np.where(flat, high + 1e-3, high)
        action = FieldSpec("action", "continuous", action.shape, action.dtype, low=tuple(low), high=tuple(high),
                           names=action.names)
        notes.append(f"action bounds: the dataset's min and max per element (meta/stats.json): low "
                     f"{np.round(low, 4).tolist()}, high {np.round(high, 4).tolist()}")
    else:
        notes.append("action bounds: none (mu-law tokens of the raw values)")
    return TimestepSpec(tuple(fields), action), notes


def _field(name: str, key: str, ft: dict, image_size: tuple[int, int] | None, source: LeRobotSource) -> FieldSpec:
    dtype, shape = str(ft.get("dtype")), tuple(int(s) for s in ft.get("shape", ()))
    where = f"{source.root / INFO_PATH}: feature {key!r}"
    if dtype in ("video", "image"):
        axes = list(ft.get("names") or ["height", "width", "channels"])
        if len(shape) != 3 or sorted(axes) != ["channels", "height", "width"]:
            raise DatasetError(f"{where}: expected a (height, width, channels) image shape, got {list(shape)} "
                               f"with names {axes}")
        h, w, c = (shape[axes.index(a)] for a in ("height", "width", "channels"))
        if image_size is not None:
            h, w = image_size
        return FieldSpec(name, "image", (h, w, c), "uint8")
    if dtype == "string":
        return FieldSpec(name, "text", (), "str")
    if dtype == "bool":
        return FieldSpec(name, "discrete", shape if shape != (1,) else (1,), "int64", n=2)
    names = _element_names(ft.get("names"), int(np.prod(shape)))
    if np.issubdtype(np.dtype(dtype), np.integer):
        top = np.asarray(source.stats.get(key, {}).get("max", [np.nan]), np.float64)
        if not np.all(np.isfinite(top)) or top.max() >= 1024:
            raise DatasetError(f"{where}: an integer feature needs meta/stats.json max below 1024 to be a discrete "
                               f"field, got {top.tolist()}")
        return FieldSpec(name, "discrete", shape, "int64", n=int(top.max()) + 1, names=names)
    if np.issubdtype(np.dtype(dtype), np.floating):
        return FieldSpec(name, "continuous", shape, dtype, names=names)
    raise DatasetError(f"{where}: dtype {dtype!r} is not one this reader maps (float, int, bool, string, image, video)")


def _element_names(names: Any, size: int) -> tuple[str, ...] | None:
    """A feature's ``names`` flattened to one per element (LeRobot also writes ``{"motors": [...]}``), or None."""
    if isinstance(names, dict):
        names = [n for v in names.values() for n in (v if isinstance(v, list) else [v])]
    if isinstance(names, list) and len(names) == size and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


def _field_name(key: str, ft: dict) -> str:
    """The field a feature becomes: a camera by the last part of its key, anything else without ``observation.``."""
    return key.split(".")[-1] if ft.get("dtype") in ("video", "image") else key.removeprefix("observation.")


def _column(rows: pa.Table, key: str, f: FieldSpec, path: Path) -> np.ndarray:
    if key not in rows.column_names:
        raise DatasetError(f"{path}: no column {key!r} (columns: {rows.column_names})")
    try:
        return column_to_numpy(rows[key], f)
    except ValueError as exc:
        raise DatasetError(f"{path}: column {key!r} holds {exc}") from None


def _png_column(col: pa.ChunkedArray, path: Path, key: str) -> np.ndarray:
    frames = []
    for k, cell in enumerate(col.to_pylist()):
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise DatasetError(f"{path}: image {key!r} row {k} has no bytes (a path-only image is not supported)")
        frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.stack(frames)


def _resize(frames: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(T, H, W, C) uint8 frames at ``shape`` (H, W, C): unchanged when equal, else area-resampled (PIL)."""
    h, w, c = shape
    if frames.shape[1:3] == (h, w):
        return frames[..., :c] if frames.shape[3] != c else frames
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BOX)) for f in frames])


def decode_frames(path: Path, timestamps: np.ndarray, fps: float, tolerance_s: float = TOLERANCE_S) -> np.ndarray:
    """The frames of an mp4 shown at ``timestamps`` (seconds, ascending), as (T, H, W, 3) uint8 RGB.

    Seeks to the keyframe before the first timestamp and decodes forward; each timestamp takes the decoded frame
    whose presentation time is nearest.

    Raises:
        DatasetError: the file is missing or not decodable, or a timestamp has no frame within ``tolerance_s``.
    """
    import av  # PyAV (bundles FFmpeg): only datasets with video cameras need it

    if not path.is_file():
        raise DatasetError(f"{path}: video file is missing")
    timestamps = np.asarray(timestamps, np.float64)
    times: list[float] = []
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            base = float(stream.time_base)
            container.seek(max(0, int((timestamps[0] - 1.0 / fps) / base)), stream=stream, backward=True,
                           any_frame=False)
            last = timestamps[-1] + tolerance_s
            for frame in container.decode(stream):
                t = float(frame.pts * base)
                if t < timestamps[0] - tolerance_s - 0.5 / fps:
                    continue
                times.append(t)
                frames.append(frame.to_ndarray(format="rgb24"))
                if t >= last:
                    break
    except (av.error.FFmpegError, IndexError) as exc:  # IndexError: no video stream
        raise DatasetError(f"{path}: not a decodable video ({type(exc).__name__}: {exc})") from None
    if not frames:
        raise DatasetError(f"{path}: no video frames from {timestamps[0]:.4f} s on")
    t = np.asarray(times)
    nearest = np.abs(t[None, :] - timestamps[:, None]).argmin(axis=1)
    gap = np.abs(t[nearest] - timestamps)
    if gap.max() > tolerance_s:
        k = int(gap.argmax())
        raise DatasetError(f"{path}: no frame within {tolerance_s} s of timestamp {timestamps[k]:.4f} s (nearest "
                           f"{t[nearest[k]]:.4f} s); the video and the data rows do not match")
    return np.stack([frames[i] for i in nearest])


def import_lerobot(src: str | Path, out: str | Path, task_id: str | None = None,
                   image_size: tuple[int, int] | None = None, action_bounds: Literal["stats", "none"] = "stats",
                   max_episodes: int | None = None, batch: int = 16, progress: bool = True) -> dict[str, Any]:
    """Import a LeRobot dataset into the episode store ``out`` (``omnipolicy dataset import``).

    Episodes are appended ``batch`` at a time, each batch one crash-safe commit; an episode keeps its LeRobot
    ``episode_index`` as its seed, so a rerun skips what is already imported and continues.

    Args:
        src: the LeRobot dataset folder.
        out: the episode store to append to.
        task_id: the task id the episodes get (default: ``lerobot/<folder name>``).
        image_size: (height, width) to resize every camera to (default: each camera's own size).
        action_bounds: see :func:`infer_spec`.
        max_episodes: import at most this many episodes (the first ones).
        batch: episodes per commit.
        progress: show a progress bar.

    Returns:
        A summary: the store, task id, spec notes, episodes and frames imported, decoded frames per second.

    Raises:
        DatasetError: the source cannot be read (nothing of the failing batch is written).
    """
    source = LeRobotSource(src)
    task_id = task_id or f"lerobot/{source.root.resolve().name}"
    spec, notes = infer_spec(source, image_size, action_bounds)
    refs = source.episodes[:max_episodes] if max_episodes is not None else source.episodes
    with EpisodeStore(out, fps=source.fps) as store:
        done = store.seeds(task_id) if store.num_episodes and task_id in store.task_ids else set()
        todo = [r for r in refs if r.index not in done]
        frames, decode_s, imported = 0, 0.0, []
        bar = tqdm(total=sum(r.length for r in todo), desc="import", unit="frame", disable=not progress)
        for start in range(0, len(todo), batch):
            prepared = []
            for ref in todo[start:start + batch]:
                t0 = time.perf_counter()
                ep = source.read(ref, spec, task_id)
                decode_s += time.perf_counter() - t0
                prepared.append(prepare_episode(ep, spec))
                frames += ref.length
                bar.update(ref.length)
            imported += store.append_episodes(prepared)
        bar.close()
        root = store.root
    if imported:
        note = {"task_id": task_id, "episodes": [int(i) for i in imported], "source": f"LeRobot {source.version} "
                f"dataset {source.root.resolve()}", "notes": notes}
        write_json_atomic(root / IMPORT_NOTES_PATH, read_import_notes(root) + [note], indent=1)
    return {"out": str(root), "task_id": task_id, "version": source.version, "notes": notes,
            "episodes": len(imported), "skipped": len(refs) - len(todo), "frames": frames,
            "read_frames_per_s": frames / decode_s if decode_s else None,
            "cameras": {f.name: list(f.shape) for f in spec.observation if f.kind == "image"}}


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON lines: {exc}") from None
