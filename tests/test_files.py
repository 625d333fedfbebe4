"""omnipolicy.files: every write replaces its target whole, or leaves it and no temporary behind."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from omnipolicy import files
from omnipolicy.files import (
    atomic_dir,
    atomic_path,
    staging_dir,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def test_docstring_examples() -> None:
    result = doctest.testmod(files)
    assert result.failed == 0 and result.attempted > 0


def test_writers_replace_the_target_and_leave_only_it(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"  # the folder is created
    write_json_atomic(target, {"b": "é", "a": [1]})
    assert target.read_text(encoding="utf-8") == '{\n    "b": "é",\n    "a": [\n        1\n    ]\n}'
    write_json_atomic(target, {"b": "é", "a": 1}, indent=1, ensure_ascii=True, sort_keys=True)
    assert target.read_text() == '{\n "a": 1,\n "b": "\\u00e9"\n}'
    write_text_atomic(target, "text\n")
    assert target.read_text() == "text\n"
    write_bytes_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(type(error)), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.json.") and tmp.name.endswith(".tmp")
        tmp.write_text("half")
        raise error
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    with pytest.raises(TypeError):
        write_json_atomic(target, {"x": object()})  # not JSON: the old file stays
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "step_1"
    for content in ("first", "second"):  # the second replaces a non-empty folder
        with atomic_dir(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".step_1.")
            (tmp / "w.txt").write_text(content)
            (tmp / "inner").mkdir()
            (tmp / "inner" / "x").write_text(content)
        assert (target / "w.txt").read_text() == content and (target / "inner" / "x").read_text() == content
        assert [p.name for p in tmp_path.iterdir()] == ["step_1"]
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "w.txt").write_text("third")
        raise RuntimeError("save failed")
    assert (target / "w.txt").read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["step_1"]


def test_staging_dir_is_removed_with_what_is_left_in_it(tmp_path: Path) -> None:
    with staging_dir(tmp_path / "cache", prefix=".build-") as tmp:
        (tmp / "a.npy").write_bytes(b"a")
        (tmp / "b.npy").write_bytes(b"b")
        (tmp / "a.npy").replace(tmp_path / "cache" / "a.npy")  # kept: moved out
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a.npy"]
    with pytest.raises(OSError), staging_dir(tmp_path / "cache", prefix=".build-") as tmp:
        (tmp / "c.npy").write_bytes(b"c")
        raise OSError("no space")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a.npy"]
