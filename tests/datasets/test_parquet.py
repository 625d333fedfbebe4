"""datasets/parquet.py: atomic writes read back whole, even while a writer keeps replacing the file."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from omnipolicy.datasets.layout import DatasetError
from omnipolicy.datasets.parquet import read_parquet, rows_digest, write_parquet_atomic


def _table(rows: int) -> pa.Table:
    return pa.table({"episode_index": np.arange(rows), "value": np.linspace(0.0, 1.0, rows)})


def test_round_trip_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    write_parquet_atomic(path, _table(100))
    back = read_parquet(path)
    assert back.equals(_table(100))
    assert rows_digest(back) == rows_digest(_table(100)) != rows_digest(_table(99))
    assert read_parquet(path, columns=["value"]).column_names == ["value"]


def test_read_while_a_writer_replaces_the_file(tmp_path: Path) -> None:
    """A reader sees one whole version: the old or the new file, never a mix (a collection polled by a reader
    read a replaced file as truncated: "Couldn't deserialize thrift")."""
    path = tmp_path / "episodes.parquet"
    sizes = (10, 5000)
    write_parquet_atomic(path, _table(sizes[0]))
    stop = threading.Event()

    def writer() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            write_parquet_atomic(path, _table(sizes[k % 2]))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            table = read_parquet(path)
            assert table.num_rows in sizes and table["episode_index"].to_pylist() == list(range(table.num_rows))
    finally:
        stop.set()
        thread.join(10)


def test_missing_and_truncated_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    with pytest.raises(DatasetError, match="t.parquet: file is missing"):
        read_parquet(path)
    write_parquet_atomic(path, _table(100))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DatasetError, match=r"t.parquet: not a readable parquet file \(\d+ bytes; truncated"):
        read_parquet(path)
