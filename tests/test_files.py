"""Atomic writes, standard JSON, ownership markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainvq.errors import BrainVQError
from brainvq.files import atomic_write_json, file_hash, mark_owned, remove_owned


def test_json_is_always_standard(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "m.json", {"psnr": float("inf"), "x": [float("nan"), 1.5], "ok": 2})
    text = (tmp_path / "m.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"psnr": None, "x": [None, 1.5], "ok": 2}
    assert not list(tmp_path.glob(".*.tmp"))


def test_remove_owned_only_removes_marked_or_empty_folders(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mark_owned(mine, "run")
    (mine / "data.bin").write_bytes(b"x")
    remove_owned(mine)
    assert not mine.exists()
    (tmp_path / "empty").mkdir()
    remove_owned(tmp_path / "empty")
    assert not (tmp_path / "empty").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    with pytest.raises(BrainVQError, match="refusing to delete"):
        remove_owned(foreign)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BrainVQError, match="is a file"):
        remove_owned(tmp_path / "file")
    assert len(file_hash(foreign / "keep.txt")) == 16


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os

    atomic_write_json(tmp_path / "m.json", {"a": 1})
    mode = (tmp_path / "m.json").stat().st_mode & 0o777
    current = os.umask(0)
    os.umask(current)
    assert mode == 0o666 & ~current  # not mkstemp's 0600
