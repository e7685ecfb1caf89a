"""Files on disk: atomic writes, content hashes, and folders that brainvq owns.

Everything here sits below every stage (config, runs, data, volumes), so any module may use it.

* Atomic writes: every file is written to a temporary name in the same folder and renamed, so a
  crash never leaves a half-written file that looks complete.
* Ownership: a folder brainvq creates (a run, a demo, a sliced dataset) holds a marker file
  ``.brainvq``. ``--force`` deletes a folder only when it carries that marker, so a mistyped path
  can never remove a user's own files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from brainvq.errors import BrainVQError

MARKER = ".brainvq"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename."""

    def write(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(Path(path), write)


def finite_json(data: Any) -> Any:
    """``data`` with every non-finite float replaced by None, so the JSON is standard (no ``Infinity``)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(value) for value in data]
    return data


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented, standard JSON (non-finite floats become null), atomically."""
    atomic_write_text(Path(path), json.dumps(finite_json(data), indent=2, allow_nan=False) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` to a temporary file, then rename (never a half-written checkpoint)."""
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_save_figure(path: Path, figure: Any, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically as PNG."""
    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", **kwargs))


def atomic_save_image(path: Path, image: Any) -> None:
    """Save a PIL image atomically as PNG."""
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))


def file_hash(path: Path, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def mark_owned(folder: Path, kind: str) -> None:
    """Create ``folder`` (if needed) and mark it as made by brainvq (``kind``: run, demo, slices...)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if not marker.exists():
        atomic_write_text(marker, f"{kind}\n")


def is_owned(folder: Path) -> bool:
    """True when ``folder`` carries brainvq's marker file."""
    return (Path(folder) / MARKER).is_file()


def remove_owned(folder: Path, what: str = "folder") -> None:
    """Delete ``folder`` for ``--force``, but only when brainvq made it (the marker file is there).

    An empty folder is removed too; anything else raises, so ``--force`` never deletes a user's files.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise BrainVQError(f"{folder}: is a file, not a {what}; refusing to delete it")
    if not is_owned(folder) and any(folder.iterdir()):
        raise BrainVQError(
            f"{folder}: not a {what} that brainvq made (no {MARKER} marker); refusing to delete it with "
            "--force. Choose another path, or empty it yourself"
        )
    shutil.rmtree(folder)


def check_replaceable(folder: Path, what: str, force: bool) -> None:
    """Raise unless ``folder`` may be written: it does not exist, is empty, or (with ``force``) was
    made by brainvq. Called before any work, so a refusal loses nothing."""
    folder = Path(folder)
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not force:
        raise BrainVQError(f"{folder}: output folder exists; pass --force to replace it")
    if not folder.is_dir():
        raise BrainVQError(f"{folder}: is a file, not a {what}; refusing to delete it")
    if not is_owned(folder):
        raise BrainVQError(
            f"{folder}: not a {what} that brainvq made (no {MARKER} marker); refusing to delete it with "
            "--force. Choose another path, or empty it yourself"
        )


def swap_in(built: Path, out: Path) -> None:
    """Put the finished folder ``built`` at ``out``; an old ``out`` (checked by :func:`check_replaceable`)
    is moved aside first and deleted only once the new one is in place."""
    out = Path(out)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(built, out)
    if old is not None:
        shutil.rmtree(old)
