"""Parquet files, written atomically (omnipolicy.files: temporary file, fsync, os.replace, fsync of the folder),
read with their page CRCs checked, and a checksum of a table's rows."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from omnipolicy.files import atomic_path

from .layout import DatasetError


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
        # One open file: its size and bytes are of one version even while a writer replaces it (given a path, pyarrow
        # took the size from one stat and read the bytes from a later open: a replaced file read as truncated).
        with pa.OSFile(str(path), "r") as source:
            return pq.read_table(source, columns=columns, page_checksum_verification=True)
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
