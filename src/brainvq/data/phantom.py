"""Synthetic brain phantom: T1-like axial slices in the OASIS layout, made from a seed.

Each subject is an ellipsoidal brain with its own size, shape, ventricle size, cortical folding,
tissue contrast, bias field and noise. Slice k of 0..num_slices-1 cuts the volume from bottom
to top: the outline grows then shrinks, ventricles and deep grey matter appear in mid slices.
Intensities follow T1 (CSF dark < grey matter < white matter), masks use the OASIS levels
0 (background), 85 (CSF), 170 (grey matter), 255 (white matter).

The phantom lets the demo and the tests run anywhere without downloads; it is no substitute for
real data when judging a model.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from brainvq.data.layout import image_dir, image_name, mask_dir, mask_name

LABEL_LEVELS = np.array([0, 85, 170, 255], dtype=np.uint8)
BACKGROUND, CSF, GREY, WHITE = 0, 1, 2, 3


@dataclass(frozen=True)
class PhantomSubject:
    """The random traits of one synthetic subject."""

    scale: float
    aspect: float
    harmonics: np.ndarray
    phases: np.ndarray
    num_gyri: int
    fold_depth: float
    fold_phase: float
    ventricle_scale: float
    atrophy: float
    levels: np.ndarray
    noise: float
    bias: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator) -> PhantomSubject:
        return cls(
            scale=float(rng.uniform(0.84, 1.0)),
            aspect=float(rng.uniform(0.78, 0.9)),
            harmonics=rng.normal(0.0, 0.025, size=4),
            phases=rng.uniform(0, 2 * np.pi, size=4),
            num_gyri=int(rng.integers(16, 26)),
            fold_depth=float(rng.uniform(0.10, 0.20)),
            fold_phase=float(rng.uniform(0, 2 * np.pi)),
            ventricle_scale=float(rng.uniform(0.6, 1.6)),
            atrophy=float(rng.uniform(0.0, 0.04)),
            levels=np.array([0.0, rng.uniform(0.08, 0.16), rng.uniform(0.40, 0.50), rng.uniform(0.68, 0.80)]),
            noise=float(rng.uniform(0.01, 0.035)),
            bias=rng.normal(0.0, 0.06, size=2),
        )


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x right, y down) and their polar angle, float32."""
    coords = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(coords, coords, indexing="ij")
    return x, y, np.arctan2(y, x)


@functools.lru_cache(maxsize=8)
def _angular_fields(
    size: int, harmonics: tuple[float, ...], phases: tuple[float, ...], num_gyri: int, fold_phase: float
) -> tuple[np.ndarray, ...]:
    """Per-subject maps that do not change with the slice: 1/outline, fold phase, sin/cos 7 theta,
    and the wavy midline's distance."""
    x, y, theta = _grid(size)
    outline = 1.0 + sum(
        a * np.cos((n + 2) * theta + p) for n, (a, p) in enumerate(zip(harmonics, phases, strict=True))
    )
    folds = num_gyri * theta + fold_phase + 1.3 * np.sin(3 * theta)
    inverse_outline = np.asarray(1.0 / outline, dtype=np.float32)
    return inverse_outline, folds, np.sin(7 * theta), np.cos(7 * theta), np.abs(x - 0.01 * np.sin(6 * y))


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    u = (x - cx) * cos + (y - cy) * sin
    v = -(x - cx) * sin + (y - cy) * cos
    return (u / max(ax, 1e-6)) ** 2 + (v / max(ay, 1e-6)) ** 2 < 1.0


def _blur(image: np.ndarray, passes: int) -> np.ndarray:
    """Separable [1, 4, 6, 4, 1]/16 smoothing, applied ``passes`` times (a cheap Gaussian)."""
    weights = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    for _ in range(passes):
        for axis in (0, 1):
            padded = np.pad(image, [(2, 2) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
            length = image.shape[axis]
            window = [slice(None), slice(None)]
            total = np.zeros_like(image)
            for i, w in enumerate(weights):
                window[axis] = slice(i, i + length)
                total += w * padded[tuple(window)]
            image = total
    return image


def tissue_labels(subject: PhantomSubject, slice_index: int, num_slices: int, size: int) -> np.ndarray:
    """Integer labels (size, size): 0 background, 1 CSF, 2 grey matter, 3 white matter."""
    z = slice_index / max(num_slices - 1, 1)
    x, y, _ = _grid(size)
    extent = 0.45 + 0.55 * np.sin(np.pi * (0.08 + 0.86 * z)) ** 0.7
    ay = 0.88 * subject.scale * extent
    ax = ay * subject.aspect * (1.0 - 0.12 * max(0.0, 0.3 - z))
    inverse_outline, folds, sin7, cos7, fissure_x = _angular_fields(
        size, tuple(subject.harmonics), tuple(subject.phases), subject.num_gyri, subject.fold_phase
    )
    r = np.sqrt((x / ax) ** 2 + ((y - 0.03) / ay) ** 2) * inverse_outline
    # sin(7 theta - 9 z) expanded so only one sine is evaluated per slice
    gyri = np.sin(folds + 5.0 * z + 0.8 * (sin7 * np.cos(9 * z) - cos7 * np.sin(9 * z)))
    ribbon = 0.09 + subject.fold_depth * (0.5 + 0.5 * gyri) + subject.atrophy
    labels = np.zeros((size, size), dtype=np.uint8)
    labels[r < 1.03] = CSF
    labels[r < 1.0] = GREY
    labels[r < 1.0 - ribbon] = WHITE
    sulcus = (gyri > 0.82 + 0.1 * subject.atrophy) & (r > 1.0 - ribbon + 0.02) & (r < 1.0)
    labels[sulcus] = CSF
    fissure = (fissure_x < 0.012 + subject.atrophy * 0.2) & (r < 1.0) & ((y < -0.15 * ay) | (y > 0.45 * ay))
    labels[fissure] = CSF
    mid = float(np.exp(-(((z - 0.55) / 0.17) ** 2)))
    if mid > 0.15:
        deep = _ellipse(x, y, -0.19 * ax / 0.6, 0.08, 0.11 * mid, 0.15 * mid, 0.3) | _ellipse(
            x, y, 0.19 * ax / 0.6, 0.08, 0.11 * mid, 0.15 * mid, -0.3
        )
        labels[deep & (labels == WHITE)] = GREY
        v = subject.ventricle_scale * mid
        ventricles = _ellipse(x, y, -0.07 * v, -0.02, 0.05 * v, 0.2 * v, -0.35) | _ellipse(
            x, y, 0.07 * v, -0.02, 0.05 * v, 0.2 * v, 0.35
        )
        labels[ventricles & (r < 0.8)] = CSF
    if z < 0.3:
        lobes = _ellipse(x, y, -0.26, 0.5, 0.24 * (1 - z), 0.2 * (1 - z), 0.2) | _ellipse(
            x, y, 0.26, 0.5, 0.24 * (1 - z), 0.2 * (1 - z), -0.2
        )
        folia = np.sin(40 * np.sqrt(x**2 + (y - 0.3) ** 2)) > 0.2
        labels[lobes & (labels == BACKGROUND)] = GREY
        labels[lobes & ~folia & (np.abs(x) > 0.06)] = WHITE
    return labels


def render_slice(
    subject: PhantomSubject, slice_index: int, num_slices: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One slice: (uint8 image (size, size), uint8 mask with levels 0/85/170/255)."""
    labels = tissue_labels(subject, slice_index, num_slices, size)
    image = subject.levels.astype(np.float32)[labels]
    image = _blur(image, passes=max(1, size // 128))
    x, y, _ = _grid(size)
    image = image * (1.0 + subject.bias[0] * x + subject.bias[1] * y)
    inside = _blur((labels > 0).astype(np.float64), passes=1) > 0.01
    image = image + inside * rng.normal(0.0, subject.noise, size=image.shape)
    image = np.clip(image * inside, 0.0, 1.0)
    return (image * 255.0 + 0.5).astype(np.uint8), LABEL_LEVELS[labels]


def split_subjects(num_subjects: int) -> dict[str, list[int]]:
    """Contiguous subject ranges as in OASIS: about 70% train, 15% validate, 15% test (>= 1 each)."""
    if num_subjects < 3:
        raise ValueError("the phantom needs at least 3 subjects (one per split)")
    num_test = max(1, round(0.15 * num_subjects))
    num_val = max(1, round(0.15 * num_subjects))
    num_train = num_subjects - num_test - num_val
    ids = list(range(1, num_subjects + 1))
    return {
        "train": ids[:num_train],
        "validate": ids[num_train : num_train + num_val],
        "test": ids[num_train + num_val :],
    }


VOLUME_PADDING = 4  # empty slices below and above the head in phantom volumes


def _write_subject(job: tuple[Path, str, int, int, int, int, bool]) -> None:
    """Render and write every slice (and mask) of one subject; depends only on (seed, subject id).

    With ``volumes``, the same slices are also stacked into a NIfTI volume (RAS+, int16, 12-bit
    range) and a label volume (0 background, 1 CSF, 2 GM, 3 WM) under ``volumes/`` and ``labels/``.
    """
    out, split, subject_id, seed, size, num_slices, volumes = job
    rng = np.random.default_rng([seed, subject_id])
    subject = PhantomSubject.draw(rng)
    images, masks = [], []
    for k in range(num_slices):
        image, mask = render_slice(subject, k, num_slices, size, rng)
        Image.fromarray(image, mode="L").save(image_dir(out, split) / image_name(subject_id, k), compress_level=1)
        Image.fromarray(mask, mode="L").save(mask_dir(out, split) / mask_name(subject_id, k), compress_level=1)
        images.append(image)
        masks.append(mask)
    if volumes:
        _write_volume(out, subject_id, np.stack(images), np.stack(masks) // 85, size)


def _write_volume(out: Path, subject_id: int, images: np.ndarray, labels: np.ndarray, size: int) -> None:
    """Stack slices (K, rows, cols) into RAS+ volumes (X, Y, Z): x = columns, y = rows upwards, z = K."""
    import nibabel as nib

    def to_ras(stack: np.ndarray) -> np.ndarray:
        volume = np.ascontiguousarray(stack[:, ::-1, :].transpose(2, 1, 0))  # (K, rows, cols) -> (X, Y, Z)
        pad = ((0, 0), (0, 0), (VOLUME_PADDING, VOLUME_PADDING))
        return np.pad(volume, pad)

    pixel_mm = 200.0 / size
    affine = np.diag([pixel_mm, pixel_mm, 4.0, 1.0])
    affine[:3, 3] = [-100.0, -100.0, -4.0 * (len(images) / 2 + VOLUME_PADDING)]
    intensity = to_ras(images).astype(np.int16) * 16  # a 12-bit scanner range
    nib.save(nib.Nifti1Image(intensity, affine), out / "volumes" / f"sub-{subject_id:03d}_T1w.nii.gz")
    nib.save(
        nib.Nifti1Image(to_ras(labels).astype(np.uint8), affine),
        out / "labels" / f"sub-{subject_id:03d}_dseg.nii.gz",
    )


def make_phantom(
    out: str | Path,
    num_subjects: int,
    seed: int = 0,
    size: int = 256,
    num_slices: int = 32,
    *,
    volumes: bool = False,
) -> dict[str, int]:
    """Write a phantom dataset in the OASIS layout under ``out``; returns images per split.

    Each subject's slices depend only on (seed, subject id), so the same seed gives the same files.
    With ``volumes``, each subject is also written as NIfTI volumes ``out/volumes/sub-NNN_T1w.nii.gz``
    and ``out/labels/sub-NNN_dseg.nii.gz`` (for ``brainvq slice-volumes``).
    """
    out = Path(out)
    if volumes:
        (out / "volumes").mkdir(parents=True, exist_ok=True)
        (out / "labels").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    jobs: list[tuple[str, int]] = []
    for split, subjects in split_subjects(num_subjects).items():
        image_dir(out, split).mkdir(parents=True, exist_ok=True)
        mask_dir(out, split).mkdir(parents=True, exist_ok=True)
        jobs += [(split, subject_id) for subject_id in subjects]
        counts[split] = len(subjects) * num_slices

    jobs_with_args = [(out, split, subject_id, seed, size, num_slices, volumes) for split, subject_id in jobs]
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers > 1:  # numpy work holds the GIL: processes, not threads
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            list(pool.map(_write_subject, jobs_with_args))
    else:
        for job in jobs_with_args:
            _write_subject(job)
    return counts
