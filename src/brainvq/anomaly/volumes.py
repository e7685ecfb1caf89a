"""``brainvq anomaly --volumes``: whole scans in, anomaly maps out, in each scan's own voxel grid.

Each volume is conformed to the run's template (:mod:`brainvq.conform`), each method's map is made on
its conformed slices (:mod:`brainvq.anomaly.methods`: the chosen one and the baselines by default), and
each map is written back through the registration into the scan's grid, as NIfTI with the scan's
affine, so it opens over the scan in any viewer:

* ``OUT/<name>_anomaly.nii.gz``: the chosen method's map; ``OUT/<name>_<method>.nii.gz`` the others
  (``_residual``, ``_intensity``, ...);
* ``OUT/<name>_coverage.nii.gz``: 1 where the conformed slab covers the scan (maps are 0 elsewhere);
* ``OUT/<name>_brain.nii.gz``: the template's brain carried into the scan (where the scores are taken);
* ``OUT/<name>.png``: every fourth conformed slice with the map over it.

With ``--truth-volumes`` (lesion masks in each scan's grid, matched by subject id), every method is
scored in the scan's grid, inside the brain (the template's, carried through the registration) and the
covered slab: pixel AP and AUROC, best Dice (an upper bound), Dice at the operating threshold
(:mod:`brainvq.anomaly.operating`; here a plain threshold in the scan's grid, without the small-component
removal the slice scores apply), and the lesion voxel fraction; per volume and pooled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from brainvq.anomaly.methods import method_maps, resolve_methods
from brainvq.anomaly.operating import operating_thresholds
from brainvq.anomaly.reference import HealthyReference, healthy_reference
from brainvq.anomaly.scoring import best_dice, dice_at
from brainvq.conform.mapback import coverage_volume, save_nifti, to_source_grid
from brainvq.conform.scans import ConformOptions, conform_scan
from brainvq.conform.template import template_of
from brainvq.errors import DataError
from brainvq.files import atomic_write_json
from brainvq.runs import LoadedRun


def slice_maps(
    run: LoadedRun, reference: HealthyReference, slices: np.ndarray, brain: np.ndarray, methods: list[str], *,
    seed: int, batch_size: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Each method's maps (K, H, W) for one conformed stack (slice k conditioned on index k)."""
    images = torch.from_numpy(slices)[:, None]  # (K, H, W) -> (K, 1, H, W)
    indices = torch.arange(len(slices))
    masks = torch.from_numpy(brain)
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in methods}
    for start in range(0, len(slices), batch_size):
        part = slice(start, start + batch_size)
        made = method_maps(run, reference, images[part], indices[part], masks[part], methods, seed=seed + start)
        for name in methods:
            maps[name].append(made[name].float())
    return {name: torch.cat(parts).numpy() for name, parts in maps.items()}


def scores(
    maps: dict[str, np.ndarray], truth: np.ndarray, where: np.ndarray, operating: dict[str, float]
) -> dict[str, Any]:
    """Every method's scores inside ``where`` (all arrays in the scan's grid)."""
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    labels = torch.from_numpy(truth[where] > 0)
    result: dict[str, Any] = {"lesion_voxel_fraction": float(labels.float().mean()) if labels.numel() else 0.0}
    for name, volume in maps.items():
        values = torch.from_numpy(volume[where].astype(np.float32))
        if labels.any() and not labels.all():
            entry = {"pixel_ap": float(binary_average_precision(values, labels.long())),
                     "pixel_auroc": float(binary_auroc(values, labels.long()))}  # fmt: skip
        else:
            entry = {"pixel_ap": float("nan"), "pixel_auroc": float("nan")}  # no lesion (or all lesion) here
        entry.update(best_dice(values, labels))
        entry["dice_at_operating_threshold"] = dice_at(values, labels, operating[name])
        result[name] = entry
    return result


def detect_volumes(
    run: LoadedRun, volumes: Path, out: Path, *, truth_volumes: Path | None = None, methods: list[str] | None = None,
    seed: int = 0, batch_size: int = 16, reference_data: str | Path | None = None, log: Any = print,
) -> dict[str, Any]:  # fmt: skip
    """See the module doc; returns (and writes to ``OUT/anomaly_volumes.json``) the per-volume records."""
    from brainvq.data.slicing import DEFAULT_SUBJECT_PATTERN, assign_subjects
    from brainvq.data.volumes import find_volumes, is_volume

    template = template_of(run.root.root)
    paths = [volumes] if is_volume(volumes) else find_volumes(volumes)
    scans = assign_subjects(
        paths, volumes.parent if is_volume(volumes) else volumes, DEFAULT_SUBJECT_PATTERN, None
    )
    truths: dict[int, Path] = {}
    if truth_volumes is not None:
        truths = assign_subjects(find_volumes(truth_volumes), truth_volumes, DEFAULT_SUBJECT_PATTERN, None)
        missing = sorted(set(scans) - set(truths))
        if missing:
            raise DataError(f"{truth_volumes}: no truth volume for subjects {', '.join(map(str, missing[:10]))}")
        for subject, path in sorted(scans.items()):  # checked before any work
            scan_shape, truth_shape = _shape(path), _shape(truths[subject])
            if scan_shape != truth_shape:
                raise DataError(
                    f"{truths[subject]}: truth volume of shape {truth_shape}, but its scan {path.name} is {scan_shape}"
                )
    names = resolve_methods(run, methods)
    files = {names[0]: "anomaly", **{m: m for m in names[1:]}}  # method -> file suffix; the first is chosen
    reference = healthy_reference(run, reference_data)
    operating = operating_thresholds(run, reference, names, reference_data, seed=seed, batch_size=batch_size)
    brain = template.brain_mask().astype(np.float32)
    records: list[dict[str, Any]] = []
    pooled: dict[str, list[np.ndarray]] = {"truth": [], **{name: [] for name in names}}
    out.mkdir(parents=True, exist_ok=True)
    for subject, path in sorted(scans.items()):
        name = path.name.split(".")[0]
        conformed = conform_scan(path, template, ConformOptions())
        record: dict[str, Any] = {"volume": str(path), "subject": subject, "ok": conformed.record["ok"],
                                  "problem": conformed.record["problem"], "correlation": conformed.record["correlation"]}  # fmt: skip
        if not conformed.record["ok"]:
            log(f"[anomaly] {path.name}: did not conform ({conformed.record['problem']}); no maps written")
            records.append(record)
            continue
        header: Any = nib.load(str(path))
        shape, affine = tuple(header.shape[:3]), np.asarray(header.affine, float)
        maps = slice_maps(run, reference, conformed.slices, brain > 0.5, names, seed=seed, batch_size=batch_size)
        in_scan = {m: to_source_grid(maps[m], conformed.transform, shape, affine) for m in names}
        covered = coverage_volume(brain.shape, conformed.transform, shape, affine)
        for method, volume in in_scan.items():
            record[f"{files[method]}_file"] = str(
                save_nifti(volume.astype(np.float32), affine, out / f"{name}_{files[method]}.nii.gz")
            )
        record["coverage_file"] = str(save_nifti(covered, affine, out / f"{name}_coverage.nii.gz"))
        in_brain = to_source_grid(brain, conformed.transform, shape, affine, nearest=True) > 0.5
        record["brain_file"] = str(save_nifti(in_brain.astype(np.uint8), affine, out / f"{name}_brain.nii.gz"))
        record["figure"] = str(
            _figure(conformed.slices, maps[names[0]], 2 * operating[names[0]], out / f"{name}.png")
        )
        if truths:
            truth_image: Any = nib.load(str(truths[subject]))
            truth = np.asanyarray(truth_image.dataobj) > 0
            where = in_brain & (covered > 0)
            record["scores"] = scores(in_scan, truth, where, operating)
            pooled["truth"].append(truth[where])
            for method in names:
                pooled[method].append(in_scan[method][where])
        records.append(record)
        log(f"[anomaly] {path.name}: maps written ({out / name}_*.nii.gz)")
    summary: dict[str, Any] = {
        "volumes": records,
        "chosen_method": names[0],
        "files": files,
        "operating_thresholds": operating,
    }
    if truths and pooled["truth"]:
        where_all = np.ones(sum(t.size for t in pooled["truth"]), bool)
        summary["pooled"] = scores({m: np.concatenate(pooled[m]) for m in names}, np.concatenate(pooled["truth"]),
                                   where_all, operating)  # fmt: skip
    atomic_write_json(out / "anomaly_volumes.json", summary)
    return summary


def _shape(path: Path) -> tuple[int, ...]:
    image: Any = nib.load(str(path))
    return tuple(image.shape[:3])


def _figure(slices: np.ndarray, heat: np.ndarray, scale: float, path: Path) -> Path:
    from PIL import Image

    from brainvq.anomaly.detection import overlay
    from brainvq.files import atomic_save_image

    picks = list(range(0, len(slices), 4))
    row = np.concatenate([overlay(slices[k], heat[k], scale) for k in picks], axis=1)
    atomic_save_image(path, Image.fromarray(row))
    return path
