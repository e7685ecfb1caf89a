"""Synthetic lesions on held-out slices: the ground truth for measuring anomaly detection.

``brainvq lesions --data DATA --split S --out OUT --seed K`` copies split S into ``OUT`` (OASIS
layout, tissue masks included) with blobs implanted in a chosen fraction of slices, following the
synthetic-anomaly protocol of the MOOD challenge (Zimmerer et al. 2022) on 2D slices:

* each lesioned slice gets 1 to 3 blobs of radius 3 to 20 pixels, elliptical with a random
  orientation and a wobbly outline, centred in white matter or grey matter (from the tissue masks;
  without masks, anywhere in the head) and cut to the brain, never in the background;
* the contrast is hyper- or hypo-intense (the blob's pixels move towards 0.9 or 0.05 of the
  intensity range by 40 to 90 %), with a sharp or a smooth (Gaussian-feathered) edge;
* MS-like lesions (``--types ms``): a cluster of 2 to 6 small ovoids (radius 1.5 to 4 pixels, i.e.
  3 to 8 mm on OASIS's 1 mm pixels; elongated, aspect 0.4 to 0.7) in the periventricular white matter
  (white matter within 8 pixels of the ventricles' CSF; without masks, skipped), hypointense as on T1
  (towards 0.2 of the range by 50 to 85 %), cut to the white matter;
* by default each lesioned slice gets one of the two kinds at random (``--types blob,ms``);
* the ground-truth mask (``keras_png_slices_lesion_S/lesion_NNN_slice_K.nii.png``, 0/255) is exactly
  the set of pixels whose value changed; ``lesions.json`` lists every blob.

Everything depends only on (seed, subject, slice), so the same seed writes the same files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from brainvq.data.dataset import load_split
from brainvq.data.images import read_mask, read_png
from brainvq.data.layout import SliceRecord, image_dir, image_name, mask_dir
from brainvq.errors import DataError
from brainvq.files import check_replaceable, mark_owned, swap_in


def lesion_dir(root: Path, split: str) -> Path:
    return Path(root) / f"keras_png_slices_lesion_{split}"


def lesion_name(subject: int, slice_index: int) -> str:
    return f"lesion_{subject:03d}_slice_{slice_index}.nii.png"


@dataclass
class Blob:
    """One implanted lesion."""

    centre: tuple[int, int]
    radius: float
    tissue: str
    kind: str  # hyper or hypo
    edge: str  # sharp or smooth
    strength: float


def _blob_alpha(
    shape: tuple[int, ...], blob: Blob, rng: np.random.Generator, aspect: tuple[float, float] = (0.5, 1.0)
) -> np.ndarray:
    """Opacity in [0, 1] of one blob: an ellipse with a wobbly outline, sharp or feathered."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dy, dx = rows - blob.centre[0], cols - blob.centre[1]
    angle = rng.uniform(0, np.pi)
    ratio = rng.uniform(*aspect)
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ratio
    theta = np.arctan2(v, u)
    wobble = 1 + sum(rng.uniform(-0.15, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    distance = np.sqrt(u**2 + v**2) / (blob.radius * wobble)
    if blob.edge == "sharp":
        return (distance <= 1.0).astype(np.float32)
    return np.clip(1.5 - distance, 0.0, 1.0).astype(np.float32) ** 1.5  # feathered over half a radius


TYPES = ("blob", "ms")


def _ms_cluster(values: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[Blob]]:
    """A cluster of small hypointense ovoids in the periventricular white matter (see the module doc)."""
    from scipy.ndimage import distance_transform_edt

    brain, white = labels > 0, labels == 3
    deep = distance_transform_edt(brain) > 10  # away from the brain's edge: the ventricles, not the sulci
    ventricles = (labels == 1) & deep
    if not ventricles.any() or not white.any():
        return values, []
    near = white & (distance_transform_edt(~ventricles) <= 8)
    candidates = np.argwhere(near)
    if len(candidates) == 0:
        return values, []
    seed_point = candidates[rng.integers(len(candidates))]
    close = candidates[np.abs(candidates - seed_point).max(1) <= 12]
    out, blobs = values.copy(), []
    for _ in range(int(rng.integers(2, 7))):
        centre = tuple(int(c) for c in close[rng.integers(len(close))])
        blob = Blob((centre[0], centre[1]), float(rng.uniform(1.5, 4.0)), "periventricular white matter", "ms-hypo",
                    str(rng.choice(["sharp", "smooth"])), float(rng.uniform(0.5, 0.85)))  # fmt: skip
        alpha = _blob_alpha(values.shape, blob, rng, aspect=(0.4, 0.7)) * white * blob.strength
        out = out * (1 - alpha) + 0.2 * alpha
        blobs.append(blob)
    return out, blobs


def implant(
    image: np.ndarray, labels: np.ndarray | None, rng: np.random.Generator, types: tuple[str, ...] = TYPES
) -> tuple[np.ndarray, np.ndarray, list[Blob]]:
    """Implant one kind of lesion (``types``: blobs, or an MS-like cluster) into ``image`` (uint8, H x W)
    inside the brain; returns (new image, truth mask, blobs)."""
    values = image.astype(np.float32) / 255.0
    brain = labels > 0 if labels is not None else values > 0.1
    if brain.sum() < 50:
        return image, np.zeros_like(image, dtype=bool), []
    kind = str(rng.choice(list(types)))
    if kind == "ms":
        out, blobs = _ms_cluster(values, labels, rng) if labels is not None else (values, [])
    else:
        out, blobs = _blobs(values, labels, brain, rng)
    new = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    return new, new != image, blobs


def _blobs(
    values: np.ndarray, labels: np.ndarray | None, brain: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[Blob]]:
    tissues = {"white matter": labels == 3, "grey matter": labels == 2} if labels is not None else {"brain": brain}
    blobs = []
    out = values.copy()
    for _ in range(int(rng.integers(1, 4))):
        tissue = str(rng.choice([t for t, m in tissues.items() if m.sum() > 0] or ["brain"]))
        where = np.argwhere(tissues.get(tissue, brain) if tissues.get(tissue, brain).sum() > 0 else brain)
        centre = tuple(int(c) for c in where[rng.integers(len(where))])
        blob = Blob(
            (centre[0], centre[1]),
            float(rng.uniform(3, 20)),
            tissue,
            str(rng.choice(["hyper", "hypo"])),
            str(rng.choice(["sharp", "smooth"])),
            float(rng.uniform(0.4, 0.9)),
        )
        alpha = _blob_alpha(values.shape, blob, rng) * brain * blob.strength  # (H, W) never in the background
        target = 0.9 if blob.kind == "hyper" else 0.05
        out = out * (1 - alpha) + target * alpha
        blobs.append(blob)
    return out, blobs


def make_lesions(
    data: str | Path,
    split: str,
    out: str | Path,
    *,
    seed: int = 0,
    fraction: float = 0.5,
    force: bool = False,
    types: tuple[str, ...] = TYPES,
) -> dict[str, object]:
    """Write a lesioned copy of split ``split`` under ``out`` (see the module doc); returns a summary."""
    if not 0 < fraction <= 1:
        raise DataError(f"--fraction must be in (0, 1], got {fraction}")
    if not types or any(t not in TYPES for t in types):
        raise DataError(f"--types takes {', '.join(TYPES)} (comma-separated), got {','.join(types)}")
    out = Path(out)
    check_replaceable(out, "lesion dataset", force)
    dataset = load_split(data, split, in_memory=False)
    if any(r.subject < 0 for r in dataset.records):
        raise DataError(f"{data}: lesions need the OASIS layout (case_NNN_slice_K names)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        record = _write(dataset.records, split, tmp, seed, fraction, types)
        mark_owned(tmp, "lesions")
        swap_in(tmp, out)  # the old copy goes only once the new one is complete
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"out": str(out), "split": split, "images": len(dataset), "lesioned": record["lesioned"], "seed": seed}


def _write(
    records: list[SliceRecord], split: str, out: Path, seed: int, fraction: float, types: tuple[str, ...]
) -> dict[str, object]:
    for folder in (image_dir(out, split), lesion_dir(out, split)):
        folder.mkdir(parents=True)
    has_masks = all(r.mask_path is not None for r in records)
    if has_masks:
        mask_dir(out, split).mkdir(parents=True)
    listing: dict[str, list[dict[str, object]]] = {}
    lesioned = 0
    for r in records:
        rng = np.random.default_rng([seed, r.subject, r.slice_index])
        image = read_png(r.path)
        if image.dtype != np.uint8:
            raise DataError(f"{r.path}: lesions are implanted into 8-bit slices only")
        labels = read_mask(r.mask_path) if r.mask_path is not None else None
        truth = np.zeros_like(image, dtype=bool)
        if rng.uniform() < fraction:
            image, truth, blobs = implant(image, labels, rng, types)
            if blobs:
                lesioned += 1
                listing[image_name(r.subject, r.slice_index)] = [asdict(b) for b in blobs]
        Image.fromarray(image, mode="L").save(image_dir(out, split) / image_name(r.subject, r.slice_index))
        Image.fromarray(truth.astype(np.uint8) * 255, mode="L").save(
            lesion_dir(out, split) / lesion_name(r.subject, r.slice_index)
        )
        if r.mask_path is not None and has_masks:
            shutil.copy(r.mask_path, mask_dir(out, split) / r.mask_path.name)
    summary = {
        "split": split,
        "seed": seed,
        "fraction": fraction,
        "types": list(types),
        "lesioned": lesioned,
        "blobs": listing,
    }
    (out / "lesions.json").write_text(json.dumps(summary, indent=1))
    return summary
