"""Volumes to slices: NIfTI / Analyze / MGH volumes cut into brainvq's OASIS slice layout.

``slice_volumes`` reads every volume under a folder with nibabel, puts it into the closest
canonical (RAS+) orientation, finds the extent of the head along the slicing axis, takes N evenly
spaced slices (or a voxel range), scales intensities robustly per volume (percentiles) to [0, 1],
resamples in-plane to square pixels of the requested size (respecting the voxel spacing), and
writes ``keras_png_slices_{split}/case_NNN_slice_K.nii.png`` plus a ``manifest.csv``. Subjects are
split into train/validate/test by a seeded permutation, never one subject in two splits. Optional
label volumes go to the ``keras_png_slices_seg_{split}`` folders with the grey levels 0/85/170/255.

Orientation of the PNGs (neurological convention): axial and coronal slices have the subject's
right on the image's right; axial slices have anterior at the top, coronal and sagittal slices
superior at the top. Slice K = 0 is the most inferior (axial), posterior (coronal) or left
(sagittal) slice, as in the OASIS set.

Everything is written to a temporary folder beside the output and renamed at the end, so a
failure leaves nothing half-written behind.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from brainvq.data.layout import image_dir, image_name, mask_dir, mask_name
from brainvq.data.volumes import (
    AXES,
    DEFAULT_SUBJECT_PATTERN,
    MANIFEST_FIELDS,
    SliceOptions,
    _save_png,
    choose_slices,
    find_volumes,
    in_plane_spacing,
    load_canonical,
    map_labels,
    resample_square,
    robust_scale,
    take_slice,
)
from brainvq.errors import DataError
from brainvq.files import check_replaceable, mark_owned, swap_in


@dataclass(frozen=True)
class VolumeJob:
    """One subject's volume (and optional label volume), already assigned to a split."""

    source: Path
    subject: int
    split: str
    labels: Path | None = None


def subject_id(path: Path, pattern: str) -> int:
    """The subject id in a file name: the first group of ``pattern`` (searched), as an integer."""
    match = re.search(pattern, path.name)
    if match is None or not match.groups() or match.group(1) is None:
        raise DataError(f"{path}: cannot parse a subject id from the file name (pattern {pattern!r})")
    try:
        return int(match.group(1))
    except ValueError:
        raise DataError(f"{path}: subject id {match.group(1)!r} is not a number (pattern {pattern!r})") from None


def subjects_from_csv(csv_path: Path) -> dict[str, int]:
    """A ``file,subject`` CSV: file names (or paths relative to the input folder) to subject ids."""
    mapping: dict[str, int] = {}
    with Path(csv_path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"file", "subject"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: needs the columns 'file' and 'subject'")
        for row in reader:
            try:
                mapping[row["file"]] = int(row["subject"])
            except ValueError:
                raise DataError(
                    f"{csv_path}: subject {row['subject']!r} of {row['file']} is not a number"
                ) from None
    return mapping


def assign_subjects(
    paths: Sequence[Path], root: Path, pattern: str, csv_map: dict[str, int] | None
) -> dict[int, Path]:
    """Subject id -> volume; two volumes of one subject are an error (their slices would collide)."""
    by_subject: dict[int, Path] = {}
    for path in paths:
        if csv_map is not None:
            key = str(path.relative_to(root))
            subject = csv_map.get(key, csv_map.get(path.name))
            if subject is None:
                raise DataError(f"{path}: not listed in the subjects CSV")
        else:
            subject = subject_id(path, pattern)
        if subject in by_subject:
            raise DataError(f"{path}: subject {subject} already has a volume ({by_subject[subject]})")
        by_subject[subject] = path
    return by_subject


def split_subjects(subjects: Sequence[int], fractions: Sequence[float], seed: int) -> dict[int, str]:
    """Seeded subject-level split into train/validate/test by ``fractions`` (summing to 1)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"--splits needs three non-negative fractions summing to 1, got {list(fractions)}")
    order = sorted(subjects)
    permutation = np.random.default_rng(seed).permutation(len(order))
    shuffled = [order[i] for i in permutation]
    n = len(shuffled)
    counts = [round(f * n) for f in fractions[1:]]
    counts = [max(1, c) if f > 0 and n >= 3 else c for c, f in zip(counts, fractions[1:], strict=True)]
    num_val, num_test = counts
    if fractions[0] == 0:  # an empty split is legitimate (--splits 0,0,1: every subject to test)
        num_test = n - num_val
    num_train = n - num_val - num_test
    if num_train < (1 if fractions[0] > 0 else 0) or num_test < 0:
        raise DataError(f"{n} subjects are too few for the splits {list(fractions)}")
    names = ["train"] * num_train + ["validate"] * num_val + ["test"] * num_test
    return dict(zip(shuffled, names, strict=True))


def slice_one(job: VolumeJob, options: SliceOptions, out: Path) -> list[dict[str, Any]]:
    """Cut one volume (and its labels) into PNGs under ``out``; returns its manifest rows."""
    volume, zooms, orientation = load_canonical(job.source)
    scaled = robust_scale(volume, options.percentiles, job.source)
    axis = AXES[options.axis]
    indices = choose_slices(scaled, options, job.source)
    labels = None
    if job.labels is not None:
        labels, _, _ = load_canonical(job.labels, labels=True)
        if labels.shape != volume.shape:
            raise DataError(
                f"{job.labels}: label volume shape {labels.shape} differs from its image's {volume.shape} "
                f"({job.source.name}, both in RAS+ orientation)"
            )
        labels = map_labels(labels, options.label_map, job.labels)
    spacing = in_plane_spacing(zooms, axis)
    rows = []
    for k, index in enumerate(indices):
        name = image_name(job.subject, k)
        plane = resample_square(take_slice(scaled, axis, index), spacing, options.size, nearest=False)
        _save_png(np.clip(plane, 0.0, 1.0), image_dir(out, job.split) / name, options.bits)
        if labels is not None:
            mask = resample_square(take_slice(labels, axis, index), spacing, options.size, nearest=True)
            Image.fromarray(mask, mode="L").save(mask_dir(out, job.split) / mask_name(job.subject, k))
        rows.append(
            {
                "png": f"{image_dir(Path(), job.split)}/{name}",
                "split": job.split,
                "subject": job.subject,
                "slice": k,
                "voxel_index": index,
                "axis": options.axis,
                "source": str(job.source),
                "orientation": orientation,
                "labels": str(job.labels) if job.labels else "",
            }
        )
    return rows


def _slice_worker(args: tuple[VolumeJob, SliceOptions, Path]) -> list[dict[str, Any]] | str:
    try:
        return slice_one(*args)
    except DataError as error:
        return str(error)


# ----------------------------------------------------------------------------- the command
@dataclass
class SliceSummary:
    """What ``slice-volumes`` wrote."""

    out: Path
    volumes: int
    images: int
    subjects: dict[str, int]
    seconds: float = 0.0


def plan_jobs(
    in_dir: Path,
    *,
    labels_dir: Path | None,
    subject_pattern: str,
    subjects_csv: Path | None,
    fractions: Sequence[float],
    seed: int,
) -> list[VolumeJob]:
    """Find volumes (and label volumes), parse subject ids and assign each subject a split."""
    in_dir = Path(in_dir)
    csv_map = subjects_from_csv(subjects_csv) if subjects_csv is not None else None
    volumes = assign_subjects(find_volumes(in_dir), in_dir, subject_pattern, csv_map)
    label_volumes: dict[int, Path] = {}
    if labels_dir is not None:
        label_volumes = assign_subjects(find_volumes(labels_dir), Path(labels_dir), subject_pattern, csv_map)
        for subject in sorted(set(label_volumes) - set(volumes)):
            raise DataError(f"{label_volumes[subject]}: label volume of subject {subject}, who has no image")
        unlabelled = sorted(set(volumes) - set(label_volumes))
        if unlabelled:  # a split with masks for only some images is refused by train-vqvae
            shown = ", ".join(str(subject) for subject in unlabelled[:10]) + (
                " ..." if len(unlabelled) > 10 else ""
            )
            raise DataError(
                f"{labels_dir}: no label volume for {len(unlabelled)} of {len(volumes)} subjects ({shown}); "
                "give labels for every subject, or none (drop --labels)"
            )
    splits = split_subjects(list(volumes), fractions, seed)
    return [VolumeJob(volumes[s], s, splits[s], label_volumes.get(s)) for s in sorted(volumes)]


def slice_volumes(
    in_dir: str | Path,
    out: str | Path,
    options: SliceOptions | None = None,
    *,
    labels_dir: str | Path | None = None,
    subject_pattern: str = DEFAULT_SUBJECT_PATTERN,
    subjects_csv: str | Path | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    force: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> SliceSummary:
    """Cut every volume under ``in_dir`` into the OASIS slice layout under ``out`` (see the module doc)."""
    import time

    started = time.monotonic()
    options = options or SliceOptions()
    options.check()
    out = Path(out)
    check_replaceable(out, "sliced dataset", force)  # refuses a folder brainvq did not make, before any work
    jobs = plan_jobs(
        Path(in_dir),
        labels_dir=Path(labels_dir) if labels_dir is not None else None,
        subject_pattern=subject_pattern,
        subjects_csv=Path(subjects_csv) if subjects_csv is not None else None,
        fractions=fractions,
        seed=seed,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        rows = _run_jobs(jobs, options, tmp, workers, progress)
        _write_manifest(tmp / "manifest.csv", rows)
        mark_owned(tmp, "slices")
        swap_in(tmp, out)  # the old dataset goes only once the new one is complete
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    subjects: dict[str, int] = {}
    for job in jobs:
        subjects[job.split] = subjects.get(job.split, 0) + 1
    return SliceSummary(out, len(jobs), len(rows), subjects, time.monotonic() - started)


def _run_jobs(
    jobs: Sequence[VolumeJob], options: SliceOptions, out: Path, workers: int | None, progress: bool
) -> list[dict[str, Any]]:
    for split in sorted({job.split for job in jobs}):
        image_dir(out, split).mkdir(parents=True)
        if any(job.labels is not None for job in jobs):
            mask_dir(out, split).mkdir(parents=True)
    args = [(job, options, out) for job in jobs]
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="volumes", unit="vol", disable=not progress, dynamic_ncols=True)
    results: list[list[dict[str, Any]] | str] = []
    if workers > 1:  # nibabel and numpy hold the GIL: processes, not threads
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for result in pool.map(_slice_worker, args):
                results.append(result)
                bar.update(1)
    else:
        for arg in args:
            results.append(_slice_worker(arg))
            bar.update(1)
    bar.close()
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise DataError(errors[0] + more)
    return [row for result in results if not isinstance(result, str) for row in result]


def _write_manifest(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def parse_label_map(text: str) -> dict[int, int]:
    """``"0:0,1:85,2:170,3:255"`` -> {0: 0, 1: 85, 2: 170, 3: 255}."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return {int(a): int(b) for a, b in pairs}
    except ValueError:
        raise DataError(f"--label-map must look like 0:0,1:85,2:170,3:255, got {text!r}") from None


def parse_range(text: str) -> tuple[int, int]:
    """``"40:120"`` -> (40, 120)."""
    try:
        first, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise DataError(f"--range must look like A:B (voxel indices), got {text!r}") from None
    return first, stop
