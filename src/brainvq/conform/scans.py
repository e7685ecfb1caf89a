"""``brainvq conform``: scans of any scanner and orientation, registered to a run's (or a data root's)
template and cut into its slices, so slice K of the output lies where slice K of the training data lies.

For each volume: read and scale it (:func:`brainvq.conform.registration.read_scan`), register it to the
template (rigid; ``--transform affine``: then affine), resample it onto the template's slices, match its
intensities inside the brain (:mod:`brainvq.conform.intensity`), set the scan's empty background to black (or, with ``--rim template``, to the template's bright rim, which
every OASIS slice keeps and a skull-stripped scan lacks), and check the result: the slab must lie inside the scan, and the conformed slices must correlate
with the template inside the brain at least as :data:`MIN_CORRELATION` (below what OASIS's own
held-out subjects reach). A volume that fails gets a clear line and ``"ok": false`` in
``OUT/conform.json`` and ``OUT/manifest.csv``; its slices are still written, for inspection.
Outputs: the OASIS layout (``keras_png_slices_<split>/case_NNN_slice_K.nii.png``, one subject per
volume; masks with ``--labels``), ``OUT/transforms/<subject>.tfm`` (ITK: template -> scan), and the
manifest. Everything is written to a temporary folder and renamed at the end.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk
from PIL import Image

from brainvq.conform import intensity
from brainvq.conform.geometry import stack_image
from brainvq.conform.registration import coverage, read_scan, register, resample
from brainvq.conform.template import Template, template_of
from brainvq.data.layout import image_dir, image_name, mask_dir, mask_name
from brainvq.errors import DataError

MIN_CORRELATION = (
    0.45  # mean over slices, inside the brain; OASIS validate subjects, conformed, reach 0.58 at worst
)
EMPTY = 0.02  # a scaled scan's background: below 2 % of its robust intensity range
MIN_COVERAGE = 0.99  # of the template's brain, on every slice
MANIFEST_FIELDS = ("subject", "source", "orientation", "ok", "problem", "correlation", "coverage", "metric",
                   "seconds", "transform")  # fmt: skip


@dataclass(frozen=True)
class ConformOptions:
    split: str = "test"
    rim: str = "keep"  # "template": fill a skull-stripped scan's empty surround with the template's rim
    transform: str = "rigid"  # or "affine" (rigid, then 12 parameters)
    label_map: tuple[tuple[int, int], ...] = ((0, 0), (1, 85), (2, 170), (3, 255))


class Conformed(NamedTuple):
    slices: np.ndarray  # (K, H, W) float32 in [0, 1]
    labels: np.ndarray | None  # (K, H, W) uint8 grey levels
    record: dict[str, Any]
    transform: sitk.Transform


def conform_scan(path: Path, template: Template, options: ConformOptions, labels: Path | None = None) -> Conformed:
    """One scan on the template's slices (see the module doc)."""
    scan = read_scan(path)
    fixed = stack_image(template.mean)
    brain = template.brain_mask()
    mask = sitk.Cast(stack_image(brain.astype(np.float32)), sitk.sitkUInt8)
    mask.CopyInformation(fixed)
    registration = register(fixed, mask, scan.image, options.transform)
    moved = sitk.GetArrayFromImage(resample(scan.image, fixed, registration.transform))  # (K, H, W)
    covered = coverage(scan.image, fixed, registration.transform)
    inside = brain & covered
    marks = intensity.landmarks(moved, template.mean, inside if inside.any() else brain)
    matched = intensity.apply(moved, marks)
    empty = (moved < EMPTY) & ~_near(brain)  # the scan's own background (and a stripped scan's surround)
    matched = np.where(empty, template.mean if options.rim == "template" else 0.0, matched).astype(np.float32)
    slice_coverage = [float(covered[k][brain[k]].mean()) if brain[k].any() else 1.0 for k in range(len(brain))]
    correlations = [_correlation(matched[k], template.mean[k], brain[k]) for k in range(len(brain))]
    record = {
        "source": str(path), "orientation": scan.orientation, "metric": round(registration.metric, 5),
        "seconds": round(registration.seconds, 2), "coverage": round(min(slice_coverage), 4),
        "correlation": round(float(np.mean(correlations)), 4), "correlation_per_slice": [round(c, 4) for c in correlations],
        "landmarks": marks._asdict(), "transform_kind": options.transform,
    }  # fmt: skip
    record["problem"] = problem(record)
    record["ok"] = record["problem"] == ""
    label_slices = _labels(labels, registration.transform, fixed, dict(options.label_map)) if labels else None
    return Conformed(matched, label_slices, record, registration.transform)


def problem(record: dict[str, Any]) -> str:
    """Why a conformed scan cannot be trusted (every reason that applies, joined), or ''."""
    reasons = []
    if record["coverage"] < MIN_COVERAGE:
        reasons.append(f"the template's slab is not fully inside the scan (at worst {record['coverage']:.0%} of a "
                       "slice's brain covered)")  # fmt: skip
    if not record["correlation"] >= MIN_CORRELATION:  # NaN too: nothing of the scan landed in the brain
        reasons.append(f"did not register: correlation with the template {record['correlation']:.2f} < "
                       f"{MIN_CORRELATION} (not a brain, or too unlike one)")  # fmt: skip
    return "; ".join(reasons)


def _near(brain: np.ndarray) -> np.ndarray:
    """The template's brain, dilated by 2 pixels in each slice."""
    from scipy.ndimage import binary_dilation

    return np.stack([binary_dilation(b, iterations=2) for b in brain])


def _correlation(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    if where.sum() < 10 or a[where].std() < 1e-6 or b[where].std() < 1e-6:
        return 0.0  # a constant slice (nothing of the scan there) correlates with nothing
    return float(np.corrcoef(a[where], b[where])[0, 1])


def _labels(path: Path, transform: sitk.Transform, fixed: sitk.Image, label_map: dict[int, int]) -> np.ndarray:
    import nibabel as nib

    from brainvq.conform.registration import image_from_array
    from brainvq.data.volumes import map_labels

    volume: Any = nib.load(str(path))
    data = np.asanyarray(volume.dataobj)
    data = data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data
    image = image_from_array(data.astype(np.float32), np.asarray(volume.affine, float))
    moved = sitk.GetArrayFromImage(resample(image, fixed, transform, nearest=True)).round().astype(np.int64)
    return map_labels(moved, label_map, path)


class ConformSummary(NamedTuple):
    out: Path
    volumes: int
    ok: int
    records: list[dict[str, Any]]
    seconds: float


def conform(
    inputs: str | Path, out: str | Path, like: str | Path, options: ConformOptions | None = None, *,
    labels_dir: str | Path | None = None, subject_pattern: str | None = None, force: bool = False,
    log: Any = print,
) -> ConformSummary:  # fmt: skip
    """Conform every volume under ``inputs`` (a file or a folder) to ``like``'s template into ``out``."""
    from brainvq.data.slicing import DEFAULT_SUBJECT_PATTERN, assign_subjects
    from brainvq.data.volumes import find_volumes, is_volume
    from brainvq.files import check_replaceable, mark_owned, swap_in

    started = time.perf_counter()
    options = options or ConformOptions()
    if options.rim not in ("keep", "template"):
        raise DataError(f"--rim must be keep or template, got {options.rim!r}")
    out, inputs = Path(out), Path(inputs)
    check_replaceable(out, "conformed dataset", force)
    template = template_of(like)
    paths = [inputs] if is_volume(inputs) else find_volumes(inputs)
    root = inputs.parent if is_volume(inputs) else inputs
    volumes = assign_subjects(paths, root, subject_pattern or DEFAULT_SUBJECT_PATTERN, None)
    label_volumes = {}
    if labels_dir is not None:
        label_volumes = assign_subjects(
            find_volumes(Path(labels_dir)), Path(labels_dir), subject_pattern or DEFAULT_SUBJECT_PATTERN, None
        )
        missing = sorted(set(volumes) - set(label_volumes))
        if missing:
            raise DataError(f"{labels_dir}: no label volume for subjects {', '.join(map(str, missing[:10]))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    records = []
    try:
        for subject, path in sorted(volumes.items()):
            result = conform_scan(path, template, options, label_volumes.get(subject))
            records.append(_write(built, subject, result, options.split))
            verdict = "ok" if result.record["ok"] else f"NOT OK: {result.record['problem']}"
            log(f"[conform] {path.name}: subject {subject}, correlation {result.record['correlation']:.3f}, "
                f"{result.record['seconds']:.1f} s, {verdict}")  # fmt: skip
        _write_records(built, records, template, like)
        mark_owned(built, "conformed")
        swap_in(built, out)
    finally:
        if built.exists():
            shutil.rmtree(built)
    return ConformSummary(out, len(records), sum(r["ok"] for r in records), records, time.perf_counter() - started)


def _write(out: Path, subject: int, result: Conformed, split: str) -> dict[str, Any]:
    from brainvq.files import atomic_save_image

    for k, plane in enumerate(result.slices):
        atomic_save_image(
            image_dir(out, split) / image_name(subject, k), Image.fromarray((plane * 255 + 0.5).astype(np.uint8))
        )
        if result.labels is not None:
            atomic_save_image(mask_dir(out, split) / mask_name(subject, k), Image.fromarray(result.labels[k]))
    transform = out / "transforms" / f"case_{subject:03d}.tfm"
    transform.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteTransform(result.transform, str(transform))
    return {"subject": subject, **result.record, "transform": str(transform.relative_to(out))}


def _write_records(out: Path, records: list[dict[str, Any]], template: Template, like: str | Path) -> None:
    from brainvq.files import atomic_write_json

    atomic_write_json(out / "conform.json", {"like": str(like), "template_hash": template.data_hash,
                                             "template_shape": list(template.mean.shape), "volumes": records})  # fmt: skip
    with (out / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
