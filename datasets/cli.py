"""``omnipolicy dataset``: inspect and check episode stores.

    omnipolicy dataset info DIR            tasks, episodes, frames, features, size, per-task returns
    omnipolicy dataset verify DIR          every file intact? (exit code 1 and the file's name if not)
    omnipolicy dataset verify DIR --repair clean up after an interrupted writer first
    omnipolicy dataset export-minari DIR --out MINARI_DIR      (optional extra: minari)
    omnipolicy dataset import-minari MINARI_DIR --out DIR --task ID
    omnipolicy dataset from-rosbag BAG [BAG ...] --out DIR --task ID   rosbag2 (MCAP/SQLite3): one bag = one episode
                                           (omnipolicy.robot_bridge.rosbag_import: it reads the task's robot arm)

DIR may be one dataset or a folder of datasets (what ``omnipolicy collect --out`` writes).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import tyro

from .images import decode_png
from .layout import INFO_PATH, STATS_PATH, TASKS_PATH, DatasetError, find_stores, read_import_notes
from .lerobot import import_lerobot
from .parquet import read_parquet, rows_digest
from .store import EpisodeStore


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def dataset_info(root: str | Path) -> dict[str, Any]:
    """Summary of one dataset: totals, features, size and per-task return statistics.

    Raises:
        DatasetError: the dataset's metadata cannot be read (the message names the file).
    """
    store = EpisodeStore(root)
    table = store.episode_table()
    tasks = {}
    for tid in store.task_ids:
        idx = store.episodes_of(tid)
        rets = store.returns(tid)
        succ = [table["success"][i].as_py() for i in idx] if idx else []
        succ = [s for s in succ if s is not None]
        tasks[tid] = {
            "instruction": store.instruction(tid),
            "episodes": len(idx),
            "frames": int(np.sum(table["length"].to_numpy()[idx])) if idx else 0,
            "return_mean": float(rets.mean()) if len(rets) else math.nan,
            "return_std": float(rets.std()) if len(rets) else math.nan,
            "return_min": float(rets.min()) if len(rets) else math.nan,
            "return_max": float(rets.max()) if len(rets) else math.nan,
            "success_rate": float(np.mean(succ)) if succ else None,
        }
    return {
        "path": str(store.root),
        "codebase_version": store.info.get("codebase_version"),
        "fps": store.fps,
        "episodes": store.num_episodes,
        "frames": store.num_frames,
        "bytes": _size(store.root),
        "features": {k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in store.info.get("features", {}).items()},
        "tasks": tasks,
        "imports": read_import_notes(store.root),
    }


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_dataset`: errors make the dataset unusable, warnings are recoverable."""

    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


class _CommittedEpisodes(NamedTuple):
    """The committed episode rows every data file is checked against."""

    episodes: pa.Table  # meta/episodes rows
    lengths: np.ndarray  # (E,) frames of each episode
    checksums: list[str | None]  # (E,) each episode's rows digest, if recorded


def verify_dataset(root: str | Path, images: bool = True, repair: bool = False) -> VerifyReport:
    """Check every file of a dataset: readable, row counts and index ranges as the metadata says, PNGs decode.

    Args:
        root: dataset folder.
        images: decode every stored image (slower) instead of only checking the bytes are there.
        repair: first adopt or remove what an interrupted writer left (takes the write lock).

    Returns:
        A report; each error names the file it is about.
    """
    root = Path(root)
    report = VerifyReport(str(root))
    store = _open_store(root, repair, report)
    if store is None:
        return report
    _check_metadata_files(root, store, report)
    committed = _check_episode_table(root, store, report)
    if committed is None:
        return report
    frames_seen = 0
    image_cols = [k for k, v in store.info.get("features", {}).items() if v["dtype"] == "image"]
    for path in store.data_files():
        checked = _check_data_file(root, store, path, committed, report)
        if checked is None:
            continue
        table, expect = checked
        frames_seen += expect
        _check_images(path, table, expect, store.info, image_cols, images, report)
    report.checked.update(episodes=store.num_episodes, frames=frames_seen, data_files=len(store.data_files()))
    _warn_leftovers(store, report)
    return report


def _open_store(root: Path, repair: bool, report: VerifyReport) -> EpisodeStore | None:
    """Open the store (after the repair, if asked for); None, with the error reported, if it cannot be opened."""
    err, warn = report.errors.append, report.warnings.append
    if not (root / INFO_PATH).is_file():
        err(f"{root / INFO_PATH}: missing; {root} is not a dataset (or no episode was ever committed)")
        return None
    try:
        store = EpisodeStore(root)
        if repair:
            done = store.recover()
            store.close()
            if any(done.values()):
                warn(f"repaired: adopted {done['adopted']} episodes, removed {done['removed_files']} files, "
                     f"dropped {done['dropped_rows']} uncommitted rows")
    except DatasetError as exc:
        err(str(exc))
        return None
    return store


def _check_metadata_files(root: Path, store: EpisodeStore, report: VerifyReport) -> None:
    """``meta/stats.json`` is valid JSON; ``meta/tasks.parquet`` is readable and holds every committed task."""
    err = report.errors.append
    for rel in (STATS_PATH,):
        try:
            json.loads((root / rel).read_text())
        except FileNotFoundError:
            err(f"{root / rel}: missing")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            err(f"{root / rel}: not valid JSON ({exc})")
    try:
        tasks = read_parquet(root / TASKS_PATH)
        if tasks.num_rows < len(store.task_ids):
            err(f"{root / TASKS_PATH}: {tasks.num_rows} tasks, info.json commits {len(store.task_ids)}")
    except DatasetError as exc:
        err(str(exc))


def _check_episode_table(root: Path, store: EpisodeStore, report: VerifyReport) -> _CommittedEpisodes | None:
    """The episode rows agree with info.json (count, checksum, total frames); None if their count does not."""
    err = report.errors.append
    info = store.info
    episodes = store.episode_table()
    if episodes.num_rows != store.num_episodes:
        err(f"{root / 'meta/episodes'}: {episodes.num_rows} committed rows, info.json says {store.num_episodes}")
        return None
    expect_digest = info.get("omnipolicy", {}).get("episodes_checksum")
    if store.num_episodes and expect_digest and rows_digest(episodes) != expect_digest:
        err(f"{store.episodes_files()[-1]}: committed episode rows do not match their checksum in info.json (corrupted)")
    lengths = episodes["length"].to_numpy() if store.num_episodes else np.zeros(0, np.int64)
    checksums = episodes["checksum"].to_pylist() if "checksum" in episodes.column_names else [None] * len(lengths)
    if int(lengths.sum()) != store.num_frames:
        err(f"{root / INFO_PATH}: total_frames={store.num_frames} but episode lengths add up to {int(lengths.sum())}")
    return _CommittedEpisodes(episodes, lengths, checksums)


def _check_data_file(
    root: Path, store: EpisodeStore, path: Path, committed: _CommittedEpisodes, report: VerifyReport
) -> tuple[pa.Table, int] | None:
    """One data file: readable, its committed rows and columns as the metadata says, each episode's rows intact.

    Returns:
        The table and its number of committed rows, or None (with the error reported) if it cannot be checked further.
    """
    err, warn = report.errors.append, report.warnings.append
    episodes, lengths = committed.episodes, committed.lengths
    rel = path.relative_to(root)
    try:
        table = read_parquet(path)
    except DatasetError as exc:
        err(str(exc))
        return None
    m = np.flatnonzero(
        (episodes["data/chunk_index"].to_numpy() * store.chunks_size + episodes["data/file_index"].to_numpy())
        == store.data_files().index(path)
    )
    expect = int(lengths[m].sum())
    if table.num_rows < expect:
        err(f"{path}: {table.num_rows} rows, the episode metadata expects {expect}")
        return None
    if table.num_rows > expect:
        warn(f"{rel}: {table.num_rows - expect} rows past the commit (left by an interrupted write; --repair removes them)")
    missing = [c for c in store.info["features"] if c not in table.column_names]
    if missing:
        err(f"{path}: columns {missing} missing")
        return None
    _check_episode_rows(path, table, expect, m, committed, report)
    return table, expect


def _check_episode_rows(
    path: Path, table: pa.Table, expect: int, m: np.ndarray, committed: _CommittedEpisodes, report: VerifyReport
) -> None:
    """The rows of each episode ``m`` stored in ``table``: indices as the metadata says, digest as recorded."""
    err = report.errors.append
    episodes, lengths, checksums = committed
    index = table["index"].to_numpy()[:expect]
    ep_col = table["episode_index"].to_numpy()[:expect]
    frame = table["frame_index"].to_numpy()[:expect]
    for i in m:
        lo, hi = int(episodes["dataset_from_index"][i].as_py()), int(episodes["dataset_to_index"][i].as_py())
        sel = slice(lo - int(index[0]), hi - int(index[0]))
        if (
            hi - lo != lengths[i]
            or not np.array_equal(index[sel], np.arange(lo, hi))
            or not np.all(ep_col[sel] == i)
            or not np.array_equal(frame[sel], np.arange(hi - lo))
        ):
            err(f"{path}: rows of episode {i} (index {lo}..{hi}) do not match the episode metadata")
        elif checksums[i] and rows_digest(table.slice(sel.start, hi - lo)) != checksums[i]:
            err(f"{path}: rows of episode {i} (index {lo}..{hi}) do not match their checksum (corrupted)")


def _check_images(
    path: Path, table: pa.Table, expect: int, info: dict[str, Any], image_cols: list[str], images: bool,
    report: VerifyReport,
) -> None:
    """Every committed image of ``table`` has bytes and, with ``images``, decodes to its feature's shape."""
    err = report.errors.append
    for col in image_cols:
        shape = info["features"][col]["shape"]
        blobs = table[col].combine_chunks().field("bytes").to_pylist()[:expect]
        for j, blob in enumerate(blobs):
            if not blob:
                err(f"{path}: {col} row {j} has no image bytes")
                break
            if images:
                try:
                    decode_png(blob, shape)
                except Exception as exc:  # noqa: BLE001 (PIL raises many types)
                    err(f"{path}: {col} row {j}: PNG does not decode to {shape} ({type(exc).__name__}: {exc})")
                    break
        report.checked["images"] = report.checked.get("images", 0) + (len(blobs) if images else 0)


def _warn_leftovers(store: EpisodeStore, report: VerifyReport) -> None:
    """Files an interrupted writer left beside the committed dataset."""
    warn = report.warnings.append
    for kind, items in store.leftovers().items():
        for item in items:
            if kind == "files":
                warn(f"{item}: not part of the committed dataset (left by an interrupted write; --repair removes it)")


# ----------------------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class Info:
    """Show what a dataset (or a folder of datasets) holds."""

    path: tyro.conf.Positional[Path]
    """Dataset folder, or a folder of datasets."""
    json: bool = False
    """Print JSON instead of a table."""


@dataclass(frozen=True)
class Verify:
    """Check that every file of a dataset is intact (exit code 1 if not)."""

    path: tyro.conf.Positional[Path]
    """Dataset folder, or a folder of datasets."""
    images: bool = True
    """Decode every stored PNG (--no-images only checks the bytes are there)."""
    repair: bool = False
    """First adopt or remove what an interrupted writer left behind."""


@dataclass(frozen=True)
class ExportMinari:
    """Export a dataset to a Minari dataset folder (needs the optional `minari` package)."""

    path: tyro.conf.Positional[Path]
    """Dataset folder (one task)."""
    out: Path
    """Minari datasets root (MINARI_DATASETS_PATH); the dataset id is derived from the task id."""
    dataset_id: str | None = None
    """Minari dataset id (default: omnipolicy/<task name>/expert-v0)."""


@dataclass(frozen=True)
class ImportMinari:
    """Import a Minari dataset into an episode store (needs the optional `minari` package)."""

    dataset_id: tyro.conf.Positional[str]
    """Minari dataset id."""
    minari_root: Path
    """Minari datasets root (MINARI_DATASETS_PATH)."""
    out: Path
    """Episode store folder to append to."""
    task: str
    """Registered task id whose TimestepSpec the episodes follow."""


@dataclass(frozen=True)
class Import:
    """Import a dataset written by LeRobot (v3.0 or v2.1, video cameras decoded) into an episode store."""

    path: tyro.conf.Positional[Path]
    """The LeRobot dataset folder (holds meta/info.json)."""
    out: Path
    """Episode store folder to append to (a rerun skips the episodes already imported)."""
    task_id: str | None = None
    """Task id of the imported episodes (default: lerobot/<folder name>); train and deploy name it."""
    image_size: tuple[int, int] | None = None
    """Resize every camera to HEIGHT WIDTH (default: each camera's own size; 16x16 patches each cost a token)."""
    action_bounds: Literal["stats", "none"] = "stats"
    """Action token range: the dataset's min/max per element (meta/stats.json), or none (mu-law of raw values)."""
    max_episodes: int | None = None
    """Import only the first N episodes."""


def _roots(path: Path) -> list[Path]:
    if not path.exists():
        sys.exit(f"omnipolicy dataset: {path} does not exist")
    roots = find_stores(path)
    if not roots:
        sys.exit(f"omnipolicy dataset: no dataset (meta/info.json) at or below {path}")
    return roots


def _print_info(info: dict[str, Any]) -> None:
    print(f"{info['path']}  (LeRobot {info['codebase_version']}, {info['fps']} fps, {_fmt_bytes(info['bytes'])})")
    print(f"  {info['episodes']} episodes, {info['frames']} frames, {len(info['tasks'])} task(s)")
    for tid, t in info["tasks"].items():
        succ = "" if t["success_rate"] is None else f", success {100 * t['success_rate']:.0f}%"
        print(f"  task {tid}: {t['episodes']} episodes, {t['frames']} frames, return {t['return_mean']:.2f} "
              f"+- {t['return_std']:.2f} [{t['return_min']:.2f}, {t['return_max']:.2f}]{succ}")
        print(f"    \"{t['instruction']}\"")
    for note in info.get("imports", []):
        eps = note["episodes"]
        if "bags" in note:
            print(f"  episodes {eps[0]}..{eps[-1]} of {note['task_id']} imported from {len(note['bags'])} {note['source']} "
                  f"bag(s): rewards {note['rewards']}; success {note['success']}")
        else:
            print(f"  episodes {eps[0]}..{eps[-1]} of {note['task_id']} imported from {note['source']}: "
                  + "; ".join(note.get("notes", [])))
    print("  features:")
    for k, v in info["features"].items():
        print(f"    {k:<32} {v['dtype']:<8} {tuple(v['shape'])}")


DATASET_SUBCOMMANDS = (
    Annotated[Info, tyro.conf.subcommand("info")]
    | Annotated[Verify, tyro.conf.subcommand("verify")]
    | Annotated[ExportMinari, tyro.conf.subcommand("export-minari")]
    | Annotated[ImportMinari, tyro.conf.subcommand("import-minari")]
    | Annotated[Import, tyro.conf.subcommand("import")]
)
"""The subcommands of ``omnipolicy dataset`` that need only the store (``omnipolicy.commands`` adds ``from-rosbag``)."""


def run_dataset_subcommand(cmd: Info | Verify | ExportMinari | ImportMinari | Import) -> None:
    """Run one parsed subcommand of :data:`DATASET_SUBCOMMANDS`."""
    if isinstance(cmd, Import):
        summary = import_lerobot(cmd.path, cmd.out, cmd.task_id, cmd.image_size, cmd.action_bounds, cmd.max_episodes)
        rate = summary["read_frames_per_s"]
        print(f"imported {summary['episodes']} episodes ({summary['frames']} frames"
              + (f", read and decoded at {rate:,.0f} frames/s" if rate else "")
              + f") of LeRobot {summary['version']} as task {summary['task_id']} into {summary['out']}"
              + (f"; {summary['skipped']} already there" if summary["skipped"] else ""))
        for note in summary["notes"]:
            print(f"  {note}")
        return
    if isinstance(cmd, Info):
        infos = []
        for root in _roots(cmd.path):
            try:
                infos.append(dataset_info(root))
            except DatasetError as exc:
                sys.exit(f"omnipolicy dataset info: {exc}")
        if cmd.json:
            print(json.dumps(infos if len(infos) > 1 else infos[0], indent=2))
        else:
            for info in infos:
                _print_info(info)
        return
    if isinstance(cmd, Verify):
        bad = 0
        for root in _roots(cmd.path):
            report = verify_dataset(root, images=cmd.images, repair=cmd.repair)
            status = "OK" if report.ok else "FAILED"
            counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.checked.items())
            print(f"{status}  {root}  ({counts})")
            for e in report.errors:
                print(f"  error: {e}")
            for w in report.warnings:
                print(f"  warning: {w}")
            bad += not report.ok
        if bad:
            sys.exit(1)
        return
    from . import minari_io  # imports gymnasium: only the Minari subcommands load it

    if isinstance(cmd, ExportMinari):
        print(minari_io.export_minari(cmd.path, cmd.out, cmd.dataset_id))
    else:
        print(minari_io.import_minari(cmd.dataset_id, cmd.minari_root, cmd.out, cmd.task))

