"""The slices to score: a split of a data root or any folder of slices, with optional lesion masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Inputs:
    """Images to score, with slice indices (from OASIS names) and optional tissue and truth masks."""

    dataset: Any  # brainvq.data.SliceDataset
    slices: torch.Tensor  # (N,) -1 unknown
    truth: list[Path] | None  # one lesion mask per image
    names: list[str]


def open_inputs(
    data: str | Path | None, split: str | None, images: str | Path | None, truth: str | Path | None
) -> Inputs:
    """``--data DATA --split S`` (truth: ``keras_png_slices_lesion_S`` when present) or ``--images DIR``."""
    from brainvq.anomaly.lesions import lesion_dir, lesion_name
    from brainvq.data.dataset import load_split
    from brainvq.data.layout import record_slice, scan_split
    from brainvq.errors import DataError

    if (data is None) == (images is None):
        raise DataError("give either --data DATA --split S or --images DIR")
    if data is not None:
        split = split or "validate"
        dataset = load_split(data, split, in_memory=False, with_masks=scan_split(data, split).has_masks)
        folder = Path(truth) if truth is not None else lesion_dir(Path(data), split)
        truths = None
        if truth is not None or folder.is_dir():
            truths = [
                folder / (r.path.name if truth is not None else lesion_name(r.subject, r.slice_index))
                for r in dataset.records
            ]
    else:
        dataset = load_split(images, "all", in_memory=False)  # type: ignore[arg-type]
        truths = [Path(truth) / r.path.name for r in dataset.records] if truth is not None else None
    for path in truths or []:
        if not path.is_file():
            raise DataError(f"{path}: lesion mask missing (one per image, same file name)")
    slices = [record_slice(r) for r in dataset.records]
    return Inputs(dataset, torch.tensor(slices), truths, [r.path.name for r in dataset.records])
