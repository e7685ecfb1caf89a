"""``brainvq anomaly --volumes``: whole scans in, anomaly maps out, in each scan's own voxel grid.

Each volume is conformed to the run's template (:mod:`brainvq.conform`), both methods' maps are made on
its conformed slices (the prior's healed residual, which is the chosen map, and the VQ-VAE residual),
and each map is written back through the registration into the scan's grid, as NIfTI with the scan's
affine, so it opens over the scan in any viewer:

* ``OUT/<name>_anomaly.nii.gz``: the prior method's map; ``OUT/<name>_residual.nii.gz``: the residual;
* ``OUT/<name>_coverage.nii.gz``: 1 where the conformed slab covers the scan (maps are 0 elsewhere);
* ``OUT/<name>_brain.nii.gz``: the template's brain carried into the scan (where the scores are taken);
* ``OUT/<name>.png``: every fourth conformed slice with the map over it.

With ``--truth-volumes`` (lesion masks in each scan's grid, matched by subject id), every method is
scored in the scan's grid, inside the brain (the template's, carried through the registration) and the
covered slab: pixel AP and AUROC, best Dice (an upper bound), Dice at the operating threshold (the
99th percentile of the method's values over healthy validate slices of the run, stored with it), and
the lesion voxel fraction; per volume and pooled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from brainvq.anomaly.maps import heal
from brainvq.anomaly.scoring import best_dice, dice_at
from brainvq.conform.mapback import coverage_volume, save_nifti, to_source_grid
from brainvq.conform.scans import ConformOptions, conform_scan
from brainvq.conform.template import template_of
from brainvq.errors import DataError
from brainvq.files import atomic_write_json
from brainvq.runs import LoadedRun

METHODS = {"anomaly": "prior_map", "residual": "residual_map"}  # file suffix -> Healed field; the first is chosen
HEALTHY_QUANTILE = 0.99
HEALTHY_SLICES = 64


def slice_maps(
    run: LoadedRun, slices: np.ndarray, threshold: float, *, seed: int, batch_size: int
) -> dict[str, np.ndarray]:
    """Both methods' maps (K, H, W) for one conformed stack (slice k conditioned on index k)."""
    images = torch.from_numpy(slices)[:, None]  # (K, H, W) -> (K, 1, H, W)
    indices = torch.arange(len(slices))
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in METHODS}
    for start in range(0, len(slices), batch_size):
        part = slice(start, start + batch_size)
        healed = heal(run, images[part], indices[part], threshold, seed=seed + start)
        for name, field in METHODS.items():
            maps[name].append(getattr(healed, field).float())
    return {name: torch.cat(parts).numpy() for name, parts in maps.items()}


def operating_thresholds(run: LoadedRun, threshold: float, *, seed: int, batch_size: int) -> dict[str, float]:
    """Each method's :data:`HEALTHY_QUANTILE` over the brain pixels of up to :data:`HEALTHY_SLICES` healthy
    validate slices, spread over the split (stored in ``RUN/metrics/anomaly_operating_thresholds.json``)."""
    import json

    from brainvq.codes import decode_levels
    from brainvq.evaluation.metrics import foreground_mask

    path = run.root.metrics / "anomaly_operating_thresholds.json"
    key = {
        "vqvae_hash": run.vqvae_hash,
        "prior_hash": run.prior_hash,
        "quantile": HEALTHY_QUANTILE,
        "threshold": threshold,
    }
    if path.is_file():
        stored = json.loads(path.read_text())
        if all(stored.get(k) == v for k, v in key.items()):
            return {name: float(stored[name]) for name in METHODS}
    from brainvq.codes import CodeMaps

    split = run.config.data.val_split or "validate"
    code_path = run.root.code_file(split)
    if not code_path.is_file():
        raise DataError(
            f"{run.root.root}: no {split} code maps to set the operating threshold (run `brainvq encode`)"
        )
    codes = CodeMaps.load(code_path).check_made_by(run.vqvae_hash, code_path)
    picks = torch.linspace(0, len(codes) - 1, min(HEALTHY_SLICES, len(codes))).round().long()
    top = codes.top_indices[picks].long() if codes.top_indices is not None else None
    images = (
        decode_levels(
            run.vqvae, codes.indices[picks].long().to(run.device), top.to(run.device) if top is not None else None
        )
        .float()
        .cpu()
    )
    values: dict[str, list[torch.Tensor]] = {name: [] for name in METHODS}
    for start in range(0, len(picks), batch_size):
        part = slice(start, start + batch_size)
        healed = heal(run, images[part], codes.slices[picks][part], threshold, seed=seed + start)
        brain = foreground_mask(images[part])[:, 0]
        for name, field in METHODS.items():
            values[name].append(getattr(healed, field)[brain].float())
    result = {
        name: float(torch.quantile(torch.cat(v)[:1_000_000], HEALTHY_QUANTILE)) for name, v in values.items()
    }
    atomic_write_json(path, {**key, **result})
    return result


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
    run: LoadedRun, volumes: Path, out: Path, *, truth_volumes: Path | None = None, quantile: float = 0.02,
    seed: int = 0, batch_size: int = 16, log: Any = print,
) -> dict[str, Any]:  # fmt: skip
    """See the module doc; returns (and writes to ``OUT/anomaly_volumes.json``) the per-volume records."""
    from brainvq.anomaly.detection import run_threshold
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
    threshold = run_threshold(run, quantile, None)
    operating = operating_thresholds(run, threshold, seed=seed, batch_size=batch_size) if truths else {}
    brain = template.brain_mask().astype(np.float32)
    records: list[dict[str, Any]] = []
    pooled: dict[str, list[np.ndarray]] = {"truth": [], **{name: [] for name in METHODS}}
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
        maps = slice_maps(run, conformed.slices, threshold, seed=seed, batch_size=batch_size)
        in_scan = {m: to_source_grid(maps[m], conformed.transform, shape, affine) for m in METHODS}
        covered = coverage_volume(brain.shape, conformed.transform, shape, affine)
        for method, volume in in_scan.items():
            record[f"{method}_file"] = str(
                save_nifti(volume.astype(np.float32), affine, out / f"{name}_{method}.nii.gz")
            )
        record["coverage_file"] = str(save_nifti(covered, affine, out / f"{name}_coverage.nii.gz"))
        in_brain = to_source_grid(brain, conformed.transform, shape, affine, nearest=True) > 0.5
        record["brain_file"] = str(save_nifti(in_brain.astype(np.uint8), affine, out / f"{name}_brain.nii.gz"))
        record["figure"] = str(_figure(conformed.slices, maps["anomaly"], out / f"{name}.png"))
        if truths:
            truth_image: Any = nib.load(str(truths[subject]))
            truth = np.asanyarray(truth_image.dataobj) > 0
            where = in_brain & (covered > 0)
            record["scores"] = scores(in_scan, truth, where, operating)
            pooled["truth"].append(truth[where])
            for method in METHODS:
                pooled[method].append(in_scan[method][where])
        records.append(record)
        log(f"[anomaly] {path.name}: maps written ({out / name}_*.nii.gz)")
    summary: dict[str, Any] = {
        "volumes": records,
        "probability_threshold": threshold,
        "operating_thresholds": operating,
    }
    if truths and pooled["truth"]:
        where_all = np.ones(sum(t.size for t in pooled["truth"]), bool)
        summary["pooled"] = scores({m: np.concatenate(pooled[m]) for m in METHODS}, np.concatenate(pooled["truth"]),
                                   where_all, operating)  # fmt: skip
    atomic_write_json(out / "anomaly_volumes.json", summary)
    return summary


def _shape(path: Path) -> tuple[int, ...]:
    image: Any = nib.load(str(path))
    return tuple(image.shape[:3])


def _figure(slices: np.ndarray, heat: np.ndarray, path: Path) -> Path:
    from PIL import Image

    from brainvq.anomaly.detection import overlay
    from brainvq.files import atomic_save_image

    picks = list(range(0, len(slices), 4))
    row = np.concatenate([overlay(slices[k], heat[k], 0.3) for k in picks], axis=1)
    atomic_save_image(path, Image.fromarray(row))
    return path
