"""Reading slices: the OASIS PNG layout, plain PNG folders, validation of bad input, in-memory datasets.

OASIS layout (as distributed in ``keras_png_slices_data``)::

    ROOT/keras_png_slices_{train,validate,test}/case_NNN_slice_K.nii.png
    ROOT/keras_png_slices_seg_{train,validate,test}/seg_NNN_slice_K.nii.png   (optional masks)

A plain folder of PNGs is also accepted; its subject and slice ids are unknown (-1).
Every problem is reported as a :class:`DataError` whose message names the file and the problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainvq.errors import DataError

SPLITS = ("train", "validate", "test")
IMAGE_RE = re.compile(r"^case_(\d+)_slice_(\d+)\.nii\.png$")
MASK_RE = re.compile(r"^seg_(\d+)_slice_(\d+)\.nii\.png$")
MASK_LEVELS = (0, 85, 170, 255)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_dir(root: Path, split: str) -> Path:
    return Path(root) / f"keras_png_slices_{split}"


def mask_dir(root: Path, split: str) -> Path:
    return Path(root) / f"keras_png_slices_seg_{split}"


def image_name(subject: int, slice_index: int) -> str:
    return f"case_{subject:03d}_slice_{slice_index}.nii.png"


def mask_name(subject: int, slice_index: int) -> str:
    return f"seg_{subject:03d}_slice_{slice_index}.nii.png"


def is_oasis_root(root: Path) -> bool:
    """True when ``root`` holds at least one ``keras_png_slices_*`` folder."""
    return Path(root).is_dir() and any(Path(root).glob("keras_png_slices_*"))


def available_splits(root: Path) -> list[str]:
    """The standard splits present under an OASIS root, in train/validate/test order."""
    return [split for split in SPLITS if image_dir(root, split).is_dir()]


@dataclass(frozen=True)
class SliceRecord:
    """One slice on disk. ``subject``/``slice_index`` are -1 when unknown (plain folders)."""

    path: Path
    split: str
    subject: int = -1
    slice_index: int = -1
    mask_path: Path | None = None


@dataclass
class SplitScan:
    """What listing a split's folder found: its records and the problems met on the way."""

    split: str
    folder: Path
    records: list[SliceRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    has_masks: bool = False


def _png_files(folder: Path, problems: list[str]) -> list[Path]:
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() != ".png":
            problems.append(f"{path}: not a PNG file (unexpected file in an image folder)")
            continue
        files.append(path)
    return files


def _parse_names(files: list[Path], pattern: re.Pattern[str], problems: list[str]) -> dict[tuple[int, int], Path]:
    parsed: dict[tuple[int, int], Path] = {}
    for path in files:
        match = pattern.match(path.name)
        if match is None:
            expected = "case_NNN_slice_K.nii.png" if pattern is IMAGE_RE else "seg_NNN_slice_K.nii.png"
            problems.append(f"{path}: cannot parse the OASIS file name (expected {expected})")
            continue
        parsed[(int(match.group(1)), int(match.group(2)))] = path
    return parsed


def scan_split(root: str | Path, split: str) -> SplitScan:
    """List one split: OASIS names parsed, masks paired, problems collected (files are not read)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: data root is not a folder")
    if not is_oasis_root(root):
        return _scan_plain_folder(root, split)
    folder = image_dir(root, split)
    if not folder.is_dir():
        found = ", ".join(available_splits(root)) or "none"
        raise DataError(f"{folder}: split '{split}' is missing (splits found: {found})")
    scan = SplitScan(split=split, folder=folder)
    images = _parse_names(_png_files(folder, scan.problems), IMAGE_RE, scan.problems)
    masks: dict[tuple[int, int], Path] = {}
    if mask_dir(root, split).is_dir():
        scan.has_masks = True
        masks = _parse_names(_png_files(mask_dir(root, split), scan.problems), MASK_RE, scan.problems)
        for key in sorted(set(images) - set(masks)):
            scan.problems.append(f"{images[key]}: image has no mask ({mask_dir(root, split) / mask_name(*key)})")
        for key in sorted(set(masks) - set(images)):
            scan.problems.append(f"{masks[key]}: mask has no image ({folder / image_name(*key)})")
    for (subject, slice_index), path in sorted(images.items()):
        scan.records.append(SliceRecord(path, split, subject, slice_index, masks.get((subject, slice_index))))
    if not scan.records and not scan.problems:
        scan.problems.append(f"{folder}: split '{split}' is empty (no case_*.png images)")
    return scan


PLAIN_VALIDATE_FRACTION = 0.1
PLAIN_SPLIT_SEED = 0


def plain_folder_split(files: Sequence[Path], split: str, root: Path) -> list[Path]:
    """The stated rule for a plain folder of PNGs: ``validate`` is a seeded 10 % of its files
    (permutation seed 0 of the sorted names, at least one file), ``train`` the other 90 %, ``all``
    every file. A plain folder has no ``test`` split."""
    if split == "all":
        return list(files)
    if split not in ("train", "validate"):
        raise DataError(
            f"{root}: a plain folder of PNGs has the splits 'train' and 'validate' (a seeded "
            f"{PLAIN_VALIDATE_FRACTION:.0%} of its files) and 'all', not '{split}'"
        )
    order = np.random.default_rng(PLAIN_SPLIT_SEED).permutation(len(files))
    num_val = max(1, round(PLAIN_VALIDATE_FRACTION * len(files))) if len(files) > 1 else 0
    chosen = set(order[:num_val].tolist())
    keep = (lambda i: i in chosen) if split == "validate" else (lambda i: i not in chosen)
    return [path for i, path in enumerate(files) if keep(i)]


def record_slice(record: SliceRecord) -> int:
    """A slice's index: the record's own (OASIS layout, a samples record), else from an OASIS-style
    file name (``case_NNN_slice_K``) in a plain folder, else -1 (unknown)."""
    if record.slice_index >= 0:
        return record.slice_index
    match = IMAGE_RE.match(record.path.name)
    return int(match.group(2)) if match else -1


SAMPLES_RECORD = "samples.json"  # what `brainvq sample` writes beside its slices (and grid.png)


def _sample_records(root: Path, split: str, problems: list[str]) -> list[SliceRecord]:
    """The slices a ``samples.json`` lists (not ``grid.png``), with the slice indices they were
    drawn for, so that every command reading a folder of slices reads what ``sample`` writes."""
    record = root / SAMPLES_RECORD
    try:
        data = json.loads(record.read_text())
        names = [Path(p).name for p in data.get("images", [])]
    except (ValueError, AttributeError, TypeError):
        problems.append(f"{record}: not a brainvq samples record (unreadable JSON)")
        return []
    if not names:
        problems.append(f"{record}: lists no images")
    slices = dict(zip(names, data.get("slices") or [], strict=False))
    for name in names:
        if not (root / name).is_file():
            problems.append(f"{root / name}: listed in {record} but missing")
    files = plain_folder_split([root / name for name in names], split, root)
    return [SliceRecord(path, split, -1, int(slices.get(path.name, -1))) for path in files]


def _scan_plain_folder(root: Path, split: str) -> SplitScan:
    scan = SplitScan(split=split, folder=root)
    if (root / SAMPLES_RECORD).is_file():
        scan.records = _sample_records(root, split, scan.problems)
        return scan
    files = plain_folder_split(_png_files(root, scan.problems), split, root)
    scan.records = [SliceRecord(path, split) for path in files]
    if not files and not scan.problems:
        scan.problems.append(f"{root}: no PNG images in split '{split}' and no keras_png_slices_* folders")
    return scan
