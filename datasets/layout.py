"""Where a dataset folder keeps each file (the LeRobotDataset v3 layout drawn in :mod:`omnipolicy.datasets.store`),
the error a missing or damaged file raises, and finding dataset folders."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


class DatasetError(RuntimeError):
    """A dataset on disk is missing, inconsistent or corrupted (the message names the file)."""


def is_store(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a committed dataset (``meta/info.json``)."""
    return (Path(path) / INFO_PATH).is_file()


def find_stores(path: str | os.PathLike) -> list[Path]:
    """Dataset roots at or below ``path`` (a store itself, or a folder of stores such as ``collect --out``)."""
    root = Path(path)
    if is_store(root):
        return [root]
    return sorted(p.parent.parent for p in root.rglob(INFO_PATH) if p.parent.name == "meta")


def read_import_notes(root: str | Path) -> list[dict[str, Any]]:
    """The import notes of a dataset (:data:`IMPORT_NOTES_PATH`), only for committed episodes; [] if none."""
    path = Path(root) / IMPORT_NOTES_PATH
    if not path.is_file() or not (Path(root) / INFO_PATH).is_file():
        return []
    total = json.loads((Path(root) / INFO_PATH).read_text()).get("total_episodes", 0)
    return [n for n in json.loads(path.read_text()) if all(i < total for i in n["episodes"])]
