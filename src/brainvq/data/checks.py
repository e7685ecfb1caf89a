"""``brainvq check-data``: images, subjects, slices per subject, sizes, bit depths, intensity ranges and
every problem found, per split."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainvq.data.dataset import find_leaks
from brainvq.data.images import (
    intensity_scale,
    read_mask,
    read_png,
)
from brainvq.data.layout import (
    available_splits,
    is_oasis_root,
    scan_split,
)
from brainvq.errors import DataError


@dataclass(frozen=True)
class ImageStats:
    """What check-data needs of one image, without keeping its pixels."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    low: int
    high: int


def _read_stats(paths: Sequence[Path]) -> tuple[list[ImageStats | None], list[str]]:
    """Shape, dtype and range of every image, read in threads; pixels are dropped as they go."""

    def attempt(path: Path) -> tuple[ImageStats | None, str | None]:
        try:
            array = read_png(path)
        except DataError as error:
            return None, str(error)
        return ImageStats(array.shape, array.dtype, int(array.min()), int(array.max())), None

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, paths))
    return [r[0] for r in results], [r[1] for r in results if r[1] is not None]


def check_data_root(root: str | Path) -> None:
    """Raise DataError unless ``root`` exists and is a folder (before a run is touched)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: data root is not a folder")


def summarize_split(root: str | Path, split: str) -> tuple[dict[str, Any], list[str]]:
    """Everything ``check-data`` reports for one split: counts, slices per subject, size, range, problems."""
    scan = scan_split(root, split)
    problems = list(scan.problems)
    stats, read_problems = _read_stats([r.path for r in scan.records])
    problems += read_problems
    good = [(r, a) for r, a in zip(scan.records, stats, strict=True) if a is not None]
    sizes: dict[tuple[int, ...], int] = defaultdict(int)
    for _, array in good:
        sizes[array.shape] += 1
    if len(sizes) > 1:
        common = max(sizes, key=lambda s: sizes[s])
        for record, array in good:
            if array.shape != common:
                problems.append(
                    f"{record.path}: image size {array.shape[1]}x{array.shape[0]} differs from "
                    f"the split's {common[1]}x{common[0]}"
                )
    for record in scan.records:
        if record.mask_path is not None:
            try:
                read_mask(record.mask_path)
            except DataError as error:
                problems.append(str(error))
    per_subject: dict[int, set[int]] = defaultdict(set)
    for record in scan.records:
        per_subject[record.subject].add(record.slice_index)
    known = {s: v for s, v in per_subject.items() if s >= 0}
    counts = [len(v) for v in known.values()]
    expected = max((max(v) for v in known.values()), default=-1) + 1
    missing = {f"{s:03d}": sorted(set(range(expected)) - v) for s, v in sorted(known.items()) if len(v) < expected}
    for subject, slices in missing.items():
        problems.append(f"{scan.folder}: subject {subject} is missing slices {slices}")
    dtypes = sorted({str(a.dtype) for _, a in good})
    wide = any(a.dtype == np.uint16 for _, a in good)
    scale = intensity_scale(np.uint16 if wide else np.uint8, max((a.high for _, a in good), default=0))
    lift = lambda a: 257 if wide and a.dtype == np.uint8 else 1  # noqa: E731
    lows = [a.low * lift(a) / scale for _, a in good]
    highs = [a.high * lift(a) / scale for _, a in good]
    summary = {
        "folder": str(scan.folder),
        "images": len(scan.records),
        "subjects": len(known),
        "slices_per_subject": {"min": min(counts), "max": max(counts)} if counts else None,
        "subjects_missing_slices": missing,
        "image_size": [list(s)[::-1] for s in sorted(sizes)],
        "dtype": dtypes,
        "intensity_range": [min(lows), max(highs)] if good else None,
        "intensity_scale": scale,
        "masks": sum(1 for r in scan.records if r.mask_path is not None) if scan.has_masks else 0,
    }
    return summary, problems


def check_data(root: str | Path) -> dict[str, Any]:
    """The ``check-data`` report for a data root: ``{"root", "layout", "splits": {...}, "problems": [...]}``."""
    root = Path(root)
    check_data_root(root)
    splits = available_splits(root) if is_oasis_root(root) else ["all"]
    if is_oasis_root(root) and not splits:
        raise DataError(f"{root}: holds keras_png_slices_* folders but none of train/validate/test")
    report: dict[str, Any] = {"root": str(root), "layout": "oasis" if is_oasis_root(root) else "folder"}
    report["splits"], report["problems"] = {}, []
    for split in splits:
        summary, problems = summarize_split(root, split)
        report["splits"][split] = summary
        report["problems"] += problems
    report["problems"] += find_leaks(root)
    return report
