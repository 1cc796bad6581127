"""``write_atomic``: the new bytes or the old ones, and no temporary file left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from nyxplug._atomic import write_atomic


def test_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_replace_keeps_the_old_entry_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()  # a file cannot be renamed over a directory
    (target / "kept").write_bytes(b"old")
    with pytest.raises(IsADirectoryError):
        write_atomic(target, b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
    assert (target / "kept").read_bytes() == b"old"
