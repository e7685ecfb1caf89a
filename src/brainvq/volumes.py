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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from brainvq.data import image_dir, image_name, mask_dir, mask_name
from brainvq.errors import DataError
from brainvq.files import check_replaceable, mark_owned, swap_in

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".mgz")
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
DEFAULT_SUBJECT_PATTERN = r"(?:sub-|OAS1_|IXI)?(\d+)"
DEFAULT_LABEL_MAP = {0: 0, 1: 85, 2: 170, 3: 255}  # FSL FAST / OASIS: background, CSF, GM, WM
MANIFEST_FIELDS = ("png", "split", "subject", "slice", "voxel_index", "axis", "source", "orientation", "labels")


@dataclass(frozen=True)
class SliceOptions:
    """How volumes become slices (see :func:`slice_volumes`)."""

    axis: str = "axial"
    num_slices: int | None = 32
    slice_range: tuple[int, int] | None = None
    size: int = 256
    bits: int = 8
    percentiles: tuple[float, float] = (0.5, 99.5)
    label_map: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_LABEL_MAP))
    head_threshold: float = 0.1

    def check(self) -> None:
        if self.axis not in AXES:
            raise DataError(f"--axis must be one of {', '.join(AXES)}, got {self.axis!r}")
        if self.bits not in (8, 16):
            raise DataError(f"--bits must be 8 or 16, got {self.bits}")
        if self.size < 8:
            raise DataError(f"--size must be at least 8, got {self.size}")
        if self.num_slices is None and self.slice_range is None:
            raise DataError("give --slices N or --range A:B")
        if self.num_slices is not None and self.num_slices < 1:
            raise DataError(f"--slices must be at least 1, got {self.num_slices}")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise DataError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
        if any(v not in (0, 85, 170, 255) for v in self.label_map.values()):
            raise DataError(f"label map values must be grey levels 0/85/170/255, got {self.label_map}")


@dataclass(frozen=True)
class VolumeJob:
    """One subject's volume (and optional label volume), already assigned to a split."""

    source: Path
    subject: int
    split: str
    labels: Path | None = None


# ----------------------------------------------------------------------------- finding volumes
def is_volume(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(suffix) for suffix in VOLUME_SUFFIXES)


def find_volumes(folder: Path) -> list[Path]:
    """Every volume under ``folder`` (recursive); an ``.img`` without its ``.hdr`` is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: volume folder does not exist")
    paths = sorted(p for p in folder.rglob("*") if is_volume(p) and not p.name.startswith("."))
    for image in sorted(folder.rglob("*.img")):
        if not image.with_suffix(".hdr").is_file():
            raise DataError(f"{image}: Analyze image without its header ({image.with_suffix('.hdr').name})")
    if not paths:
        raise DataError(f"{folder}: no volumes found (.nii, .nii.gz, .hdr/.img, .mgz)")
    return paths


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


# ----------------------------------------------------------------------------- one volume
def load_canonical(path: Path, *, labels: bool = False) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """A volume in closest-canonical RAS+ orientation: (data (X, Y, Z), voxel sizes, source axis codes)."""
    import nibabel as nib

    try:
        image: Any = nib.load(str(path))
        orientation = "".join(str(c) for c in nib.aff2axcodes(image.affine))
        if len(image.shape) == 4 and image.shape[3] == 1:
            image = image.slicer[..., 0]
        if len(image.shape) == 4:
            raise DataError(f"{path}: 4D volume with {image.shape[3]} frames; expected one (3D)")
        if len(image.shape) != 3:
            raise DataError(f"{path}: {len(image.shape)}D image of shape {image.shape}; expected a 3D volume")
        canonical = nib.as_closest_canonical(image)
        data = np.asanyarray(canonical.dataobj)
        data = data.astype(np.int64 if labels else np.float32, copy=False)
    except DataError:
        raise
    except Exception as error:  # nibabel raises many types for unreadable or truncated files
        raise DataError(f"{path}: unreadable volume ({type(error).__name__}: {error})") from None
    zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    return data, (zooms[0], zooms[1], zooms[2]), orientation


def robust_scale(volume: np.ndarray, percentiles: tuple[float, float], path: Path) -> np.ndarray:
    """Scale to [0, 1] between the volume's low and high percentiles (clipped)."""
    if not np.isfinite(volume).all():
        raise DataError(f"{path}: volume contains NaN or infinite voxels")
    sample = volume.ravel()[:: max(1, volume.size // 2_000_000)]  # percentiles of up to 2M voxels
    low, high = np.percentile(sample, percentiles)
    if high <= low:
        low, high = float(volume.min()), float(volume.max())
    if high <= low:
        raise DataError(f"{path}: every voxel has the same value ({low}); nothing to slice")
    return np.clip((volume - low) / (high - low), 0.0, 1.0, dtype=np.float32)


def head_extent(scaled: np.ndarray, axis: int, threshold: float) -> tuple[int, int]:
    """First and last slice along ``axis`` that hold head voxels (above ``threshold`` of the range)."""
    other = tuple(a for a in range(3) if a != axis)
    foreground = (scaled > threshold).sum(axis=other)
    keep = np.flatnonzero(foreground >= max(1, 0.01 * foreground.max()))
    return int(keep[0]), int(keep[-1])


def choose_slices(scaled: np.ndarray, options: SliceOptions, path: Path) -> list[int]:
    """Voxel indices along the slicing axis, inferior to superior (see :class:`SliceOptions`)."""
    axis = AXES[options.axis]
    depth = scaled.shape[axis]
    if options.slice_range is not None:
        first, stop = options.slice_range
        if not 0 <= first < stop <= depth:
            raise DataError(f"{path}: --range {first}:{stop} is outside the volume's 0:{depth} slices")
        last = stop - 1
    else:
        first, last = head_extent(scaled, axis, options.head_threshold)
    available = last - first + 1
    count = options.num_slices if options.num_slices is not None else available
    if count > available:
        raise DataError(
            f"{path}: asked for {count} slices but the {'range' if options.slice_range else 'head'} "
            f"spans only {available} (voxels {first}..{last} along the {options.axis} axis)"
        )
    return [int(v) for v in np.linspace(first, last, count).round()]


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One slice as an image (rows top to bottom): anterior/superior up, subject's right on the right."""
    where: list[Any] = [slice(None)] * 3
    where[axis] = index
    plane = volume[tuple(where)]  # (X, Y, Z) -> (X, Y), (X, Z) or (Y, Z), a view
    return np.ascontiguousarray(plane.T[::-1])  # (a, b) -> (b reversed, a): rows = b from high to low


def in_plane_spacing(zooms: tuple[float, float, float], axis: int) -> tuple[float, float]:
    """(column, row) pixel spacing of :func:`take_slice` images."""
    kept = [zooms[a] for a in range(3) if a != axis]
    return kept[0], kept[1]


def resample_square(plane: np.ndarray, spacing: tuple[float, float], size: int, *, nearest: bool) -> np.ndarray:
    """Pad to a square field of view (in millimetres) and resize to ``size`` x ``size`` with Pillow."""
    rows, cols = plane.shape
    width_mm, height_mm = cols * spacing[0], rows * spacing[1]
    pixel_mm = max(width_mm, height_mm) / size
    new_cols = max(1, min(size, round(width_mm / pixel_mm)))
    new_rows = max(1, min(size, round(height_mm / pixel_mm)))
    if nearest:
        resized = np.asarray(
            Image.fromarray(plane.astype(np.uint8)).resize((new_cols, new_rows), Image.Resampling.NEAREST)
        )
    else:
        resized = np.asarray(
            Image.fromarray(plane.astype(np.float32), mode="F").resize(
                (new_cols, new_rows), Image.Resampling.BILINEAR
            )
        )
    out = np.zeros((size, size), dtype=resized.dtype)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    out[top : top + new_rows, left : left + new_cols] = resized
    return out


def map_labels(labels: np.ndarray, label_map: dict[int, int], path: Path) -> np.ndarray:
    """Label values -> uint8 grey levels; a value missing from the map is an error."""
    values = np.unique(labels)
    if values.size and values.min() < 0:
        raise DataError(f"{path}: negative label values ({int(values.min())})")
    unknown = [int(v) for v in values if int(v) not in label_map]
    if unknown:
        raise DataError(f"{path}: label values {unknown[:5]} are not in the label map {label_map}")
    lookup = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.uint8)
    for value, level in label_map.items():
        if 0 <= value < len(lookup):
            lookup[value] = level
    return lookup[labels]


def _save_png(array: np.ndarray, path: Path, bits: int) -> None:
    if bits == 16:
        Image.fromarray((array * 65535.0 + 0.5).astype(np.uint16)).save(path, compress_level=1)
    else:
        Image.fromarray((array * 255.0 + 0.5).astype(np.uint8), mode="L").save(path, compress_level=1)


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
