"""Atomic file writes: a reader sees the old file or the new one, never a part of either.

Every writer here fills a temporary file in the target's own folder (named ``.<name>.<random>.tmp``, so a glob
for ``*.json`` or ``*.parquet`` does not see it and ``EpisodeStore.recover`` removes a leftover), flushes it to
disk, renames it over the target with ``os.replace`` (atomic within one filesystem) and flushes the folder, so
the rename itself survives a power cut. On any failure, Ctrl-C included, the temporary is removed and the
target is left as it was. :func:`atomic_dir` does the same for a whole folder (a checkpoint).

This module imports nothing else of omnipolicy, so every layer may use it.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> write_json_atomic(folder / "info.json", {"fps": 50})
>>> (folder / "info.json").read_text()
'{\\n    "fps": 50\\n}'
>>> sorted(p.name for p in folder.iterdir())
['info.json']
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's content to disk (what ``os.replace`` needs first to be atomic across a power cut).

    Args:
        path: the file, closed or open elsewhere (its written data must be flushed from Python's buffers).
    """
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename, creation or unlink inside the folder ``path`` durable.

    Args:
        path: the folder.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write; on success it replaces ``path`` atomically.

    The parent folder is created if needed. After the block the temporary file is fsynced, renamed onto
    ``path`` and the folder fsynced; if the block raises, the temporary file is removed and ``path`` is untouched.

    Args:
        path: the file to (re)place.

    Yields:
        The temporary file's path (it exists, empty): write it by name, e.g. ``pq.write_table(table, tmp)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Args:
        path: the file to (re)place.
        data: its new content.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`).

    Args:
        path: the file to (re)place.
        text: its new content, written as is (add the final newline you want).
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = 4, ensure_ascii: bool = False,
                      **dumps: Any) -> None:
    """Write ``data`` as JSON (UTF-8, no final newline) to ``path`` atomically (see :func:`atomic_path`).

    The defaults (indent 4, non-ASCII kept as is) are LeRobot's ``meta/*.json`` format.

    Args:
        path: the file to (re)place.
        data: anything ``json.dumps`` takes.
        indent: spaces per level (``None``: one line).
        ensure_ascii: escape non-ASCII characters as ``\\uXXXX``.
        **dumps: more ``json.dumps`` options (``sort_keys``, ``default``, ...).
    """
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=ensure_ascii, **dumps))


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """Yield a new empty folder ``parent/<prefix><random>.tmp`` to build something in; it is removed afterwards.

    Whatever the block leaves in it (all of it, if the block raises) is deleted on exit; move what you keep out
    of it (or rename the folder itself) inside the block.

    Args:
        parent: where the folder is made (created if needed); the same filesystem as the final place, so that
            ``os.replace`` out of it is a rename.
        prefix: start of its name; begin it with ``.`` to hide it from globs.

    Yields:
        The folder.
    """
    Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=".tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path`` to fill; on success it replaces ``path`` atomically.

    After the block every file in the folder and the folder itself are fsynced, the folder is renamed onto
    ``path`` (a folder already there is moved aside first, then deleted: ``os.replace`` cannot replace a
    non-empty folder) and the parent fsynced. If the block raises, the temporary folder is deleted and ``path``
    is untouched.

    Args:
        path: the folder to (re)place.

    Yields:
        The temporary folder (``<parent>/.<name>.<random>.tmp``).
    """
    path = Path(path)
    with staging_dir(path.parent, prefix=f".{path.name}.") as tmp:
        yield tmp
        for root, _, names in os.walk(tmp):
            for name in names:
                fsync_file(Path(root) / name)
            fsync_dir(root)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
