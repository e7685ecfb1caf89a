"""The operating threshold of each anomaly method, chosen on healthy data before any lesion is seen.

A best-threshold Dice is an upper bound: it picks the threshold with the answer in hand. A user needs a
threshold fixed in advance, so each method's is the :data:`HEALTHY_QUANTILE` of its post-processed
values over the brain pixels of :data:`HEALTHY_SLICES` real validate slices spread over the split (no
lesions): about 1 % of healthy brain pixels are flagged. Stored in
``RUN/metrics/anomaly_operating_thresholds.json`` with the checkpoints and settings it was made with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from brainvq.anomaly.methods import method_maps
from brainvq.anomaly.reference import HealthyReference, reference_key
from brainvq.errors import RunError
from brainvq.files import atomic_write_json
from brainvq.runs import LoadedRun

HEALTHY_QUANTILE = 0.99
HEALTHY_SLICES = 64


def brain_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The brain (B, H, W) bool: the tissue masks when the data has them, else the bright foreground."""
    from brainvq.evaluation.metrics import foreground_mask

    if "mask" in batch:
        return batch["mask"] > 0
    return foreground_mask(batch["image"])[:, 0]


def operating_thresholds(
    run: LoadedRun, reference: HealthyReference, methods: list[str], data_root: str | Path | None, *, seed: int = 0,
    batch_size: int = 16,
) -> dict[str, float]:  # fmt: skip
    """Each method's threshold (see the module doc), computed for the methods not stored yet."""
    path = run.root.metrics / "anomaly_operating_thresholds.json"
    key = {**reference_key(run), "quantile": HEALTHY_QUANTILE, "slices": HEALTHY_SLICES, "seed": seed}
    stored: dict[str, Any] = {}
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") != key:
            stored = {}
    thresholds = dict(stored.get("thresholds", {}))
    missing = [m for m in methods if m not in thresholds]
    if missing:
        thresholds.update(_measure(run, reference, missing, data_root, seed=seed, batch_size=batch_size))
        atomic_write_json(path, {"key": key, "thresholds": thresholds})
    return {m: float(thresholds[m]) for m in methods}


def healthy_slices(run: LoadedRun, data_root: str | Path | None) -> Any:
    """A dataset of :data:`HEALTHY_SLICES` real validate slices spread over the split, with masks if any."""
    from brainvq.data.dataset import SliceDataset, load_split
    from brainvq.data.layout import scan_split

    root = data_root or run.config.data.root
    split = run.config.data.val_split or "validate"
    if root is None or not Path(root).is_dir():
        raise RunError(f"{run.root.root}: healthy {split} slices ({root}) are needed for the operating thresholds; "
                       "pass --reference-data DATA")  # fmt: skip
    dataset = load_split(root, split, in_memory=False, with_masks=scan_split(root, split).has_masks)
    picks = torch.linspace(0, len(dataset) - 1, min(HEALTHY_SLICES, len(dataset))).round().long().tolist()
    return SliceDataset([dataset.records[i] for i in picks], with_masks=dataset.with_masks, in_memory=False)


def _measure(
    run: LoadedRun, reference: HealthyReference, methods: list[str], data_root: str | Path | None, *, seed: int,
    batch_size: int,
) -> dict[str, float]:  # fmt: skip
    from brainvq.data.dataset import iterate_batches

    healthy = healthy_slices(run, data_root)
    values: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    for batch in iterate_batches(healthy, batch_size):
        slices = batch["slice"] if bool((batch["slice"] >= 0).all()) else None
        brain = brain_of(batch)
        maps = method_maps(
            run, reference, batch["image"], slices, brain, methods, seed=seed + int(batch["index"][0])
        )
        for method, heat in maps.items():
            values[method].append(heat[brain].float())
    return {m: float(torch.quantile(torch.cat(v)[:4_000_000], HEALTHY_QUANTILE)) for m, v in values.items()}
