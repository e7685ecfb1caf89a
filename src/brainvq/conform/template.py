"""The template a scan is registered to: the training split's mean slice stack.

One mean image per slice index over the split's subjects (K, H, W, in [0, 1]) and, when the split
has tissue masks, the mean brain map (the fraction of subjects whose pixel is CSF, grey or white
matter). A run stores the template of the data it was trained on (``RUN/template.npz``, written by
``train-vqvae``, with the data's hash); a data root's is built on first use and cached in
``$BRAINVQ_CACHE/templates`` (default ``~/.cache/brainvq``), keyed by every file's path, size and
modification time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from brainvq.data.dataset import SliceDataset, load_split
from brainvq.data.images import read_mask
from brainvq.data.layout import is_oasis_root, scan_split
from brainvq.errors import DataError, RunError

TEMPLATE_FILE = "template.npz"
BRAIN_THRESHOLD = 0.5  # a pixel is brain in the template where at least half the subjects have tissue there


class Template(NamedTuple):
    """The mean slice stack of a training split."""

    mean: np.ndarray  # (K, H, W) float32 in [0, 1]
    brain: np.ndarray | None  # (K, H, W) float32: fraction of subjects with tissue there (None without masks)
    data_hash: str
    subjects: int

    def brain_mask(self) -> np.ndarray:
        """(K, H, W) bool: the template's brain, from the masks, else from its intensities."""
        if self.brain is not None:
            return self.brain >= BRAIN_THRESHOLD
        return self.mean > 0.5 * float(np.percentile(self.mean[self.mean > 0.05], 50))

    def save(self, path: Path) -> None:
        from brainvq.files import atomic_write

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez_compressed(
                    handle, mean=self.mean, brain=self.brain if self.brain is not None else np.zeros(0),
                    data_hash=np.array(self.data_hash), subjects=np.array(self.subjects),
                )  # fmt: skip

        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: Path) -> Template:
        try:
            with np.load(path) as saved:
                brain = saved["brain"]
                return cls(
                    saved["mean"], brain if brain.size else None, str(saved["data_hash"]), int(saved["subjects"])
                )
        except (OSError, KeyError, ValueError) as error:
            raise DataError(f"{path}: not a brainvq template ({error})") from None


def data_hash(root: str | Path, split: str) -> str:
    """A hash of a split's files (path, size, modification time of every image and mask)."""
    scan = scan_split(root, split)
    stamps = []
    for record in scan.records:
        for path in (record.path, record.mask_path):
            if path is not None:
                stat = path.stat()
                stamps.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:16]


def build_template(root: str | Path, split: str = "train") -> Template:
    """The mean slice stack of ``split`` (OASIS layout: every subject's slice K averaged)."""
    if not is_oasis_root(Path(root)):
        raise DataError(f"{root}: a template needs the OASIS layout (case_NNN_slice_K names give the slice index)")
    dataset = load_split(root, split, in_memory=False, with_masks=scan_split(root, split).has_masks)
    return template_from_dataset(dataset, data_hash(root, split))


def template_from_dataset(dataset: SliceDataset, hash_of_data: str) -> Template:
    """The mean of every subject's slice K, for each K, over a dataset in the OASIS layout."""
    sums: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(dataset.image_size, np.float64))
    brains: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(dataset.image_size, np.float64))
    counts: dict[int, int] = defaultdict(int)
    for start in range(0, len(dataset), 256):
        indices = list(range(start, min(start + 256, len(dataset))))
        images = dataset.images(indices)[:, 0].numpy()  # (B, 1, H, W) -> (B, H, W)
        for index, image in zip(indices, images, strict=True):
            record = dataset.records[index]
            sums[record.slice_index] += image
            if record.mask_path is not None and dataset.with_masks:
                brains[record.slice_index] += read_mask(record.mask_path) > 0
            counts[record.slice_index] += 1
    slices = sorted(counts)
    if slices != list(range(len(slices))):
        raise DataError(f"slice indices {slices[:5]}...: a template needs slices 0..K-1 for every subject")
    mean = np.stack([sums[k] / counts[k] for k in slices]).astype(np.float32)
    brain = np.stack([brains[k] / counts[k] for k in slices]).astype(np.float32) if dataset.with_masks else None
    return Template(mean, brain, hash_of_data, len({record.subject for record in dataset.records}))


def cache_path(root: str | Path, split: str) -> Path:
    folder = Path(os.environ.get("BRAINVQ_CACHE") or Path.home() / ".cache" / "brainvq") / "templates"
    return folder / f"template_{data_hash(root, split)}.npz"


def template_of(reference: str | Path, split: str = "train") -> Template:
    """The template of a run directory (its stored one) or of a data root (cached after the first build)."""
    reference = Path(reference)
    if not reference.exists():
        raise DataError(f"{reference}: no such run directory or data root")
    stored = reference / TEMPLATE_FILE
    if stored.is_file():
        return Template.load(stored)
    if (reference / "checkpoints").is_dir():
        raise RunError(
            f"{reference}: this run has no template (it was trained before brainvq stored one); make it with "
            f"`brainvq template --run {reference} --data DATA`"
        )
    path = cache_path(reference, split)
    if path.is_file():
        return Template.load(path)
    template = build_template(reference, split)
    with contextlib.suppress(OSError):  # a read-only home: build it again next time
        template.save(path)
    return template
