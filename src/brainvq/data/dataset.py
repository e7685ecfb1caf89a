"""A split as a dataset: in memory or streamed, batches without per-item collation, and the check that
no subject is in two splits."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainvq.data.images import (
    _read_all,
    _stack_images,
    intensity_scale,
    read_mask,
    read_png,
    select_records,
)
from brainvq.data.layout import (
    IMAGE_RE,
    SliceRecord,
    available_splits,
    image_dir,
    is_oasis_root,
    scan_split,
)
from brainvq.errors import DataError


class SliceDataset(torch.utils.data.Dataset):
    """Slices of one split; items are dicts with ``image`` (1, H, W) float in [0, 1], ``subject``,
    ``slice``, ``split``, ``path`` and, when ``with_masks``, ``mask`` (H, W) int64 labels 0..3.

    With ``in_memory`` every image is read (and validated) once and held as uint8/uint16.
    ``__getitems__`` returns whole batches without per-item collation.
    """

    def __init__(self, records: Sequence[SliceRecord], *, with_masks: bool = False, in_memory: bool = True):
        if not records:
            raise DataError("no images selected")
        self.records = list(records)
        self.with_masks = with_masks
        if with_masks:
            missing = [r for r in self.records if r.mask_path is None]
            if missing:
                raise DataError(f"{missing[0].path}: masks were asked for but this image has none")
        self.pixels: np.ndarray | None = None
        if in_memory:
            arrays, problems = _read_all([r.path for r in self.records])
            if problems:
                more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
                raise DataError(problems[0] + more)
            self.pixels = _stack_images(self.records, [a for a in arrays if a is not None])
            self.image_size: tuple[int, int] = tuple(self.pixels.shape[1:])
            self.scale = intensity_scale(self.pixels.dtype, int(self.pixels.max()))
        else:
            first = read_png(self.records[0].path)
            self.image_size = tuple(first.shape)
            self.scale = 255.0
            if first.dtype == np.uint16:  # one streaming pass for the dataset's bit depth
                self.scale = intensity_scale(np.uint16, max(int(read_png(r.path).max()) for r in self.records))

    def __len__(self) -> int:
        return len(self.records)

    def subjects(self) -> torch.Tensor:
        return torch.tensor([r.subject for r in self.records], dtype=torch.long)

    def slice_indices(self) -> torch.Tensor:
        return torch.tensor([r.slice_index for r in self.records], dtype=torch.long)

    def _pixels(self, index: int) -> np.ndarray:
        if self.pixels is not None:
            return self.pixels[index]
        array = read_png(self.records[index].path)
        if array.shape != self.image_size:
            raise DataError(f"{self.records[index].path}: image size {array.shape} differs from {self.image_size}")
        return array

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """A float batch (B, 1, H, W) in [0, 1]."""
        if self.pixels is not None:
            raw = torch.from_numpy(self.pixels[np.asarray(indices, dtype=np.int64)])
        else:
            raw = torch.from_numpy(np.stack([self._pixels(i) for i in indices]))
        if raw.dtype == torch.uint8 and self.scale != 255.0:  # 8-bit files in a 16-bit dataset
            raw = raw.to(torch.int32) * 257
        return raw.unsqueeze(1).float().div_(self.scale)  # (B, H, W) -> (B, 1, H, W)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        item: dict[str, Any] = {
            "image": self.images([index])[0],
            "subject": record.subject,
            "slice": record.slice_index,
            "split": record.split,
            "path": str(record.path),
            "index": index,
        }
        if self.with_masks:
            assert record.mask_path is not None
            item["mask"] = torch.from_numpy(read_mask(record.mask_path))
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "image": self.images(indices),
            "subject": torch.tensor([self.records[i].subject for i in indices], dtype=torch.long),
            "slice": torch.tensor([self.records[i].slice_index for i in indices], dtype=torch.long),
            "index": torch.tensor(list(indices), dtype=torch.long),
        }
        if self.with_masks:
            batch["mask"] = torch.stack(
                [torch.from_numpy(read_mask(self.records[i].mask_path)) for i in indices]  # type: ignore[arg-type]
            )
        return batch


def load_split(
    root: str | Path,
    split: str,
    *,
    with_masks: bool = False,
    in_memory: bool = True,
    limit_subjects: int | None = None,
    limit_images: int | None = None,
) -> SliceDataset:
    """Open one split as a :class:`SliceDataset`, raising DataError on the first problem found."""
    scan = scan_split(root, split)
    if scan.problems:
        more = f" (and {len(scan.problems) - 1} more; run `brainvq check-data`)" if len(scan.problems) > 1 else ""
        raise DataError(scan.problems[0] + more)
    records = select_records(scan.records, limit_subjects, limit_images)
    if not records:
        raise DataError(f"{scan.folder}: the subset (limit_subjects/limit_images) selects no images")
    return SliceDataset(records, with_masks=with_masks, in_memory=in_memory)


def check_no_leak(root: str | Path) -> None:
    """Raise DataError when a subject id appears in more than one split (evaluation leak)."""
    problems = find_leaks(root)
    if problems:
        raise DataError(problems[0])


def find_leaks(root: str | Path) -> list[str]:
    """One message per subject found in more than one split of an OASIS root."""
    root = Path(root)
    if not is_oasis_root(root):
        return []
    where: dict[int, list[str]] = defaultdict(list)
    for split in available_splits(root):
        subjects = {int(m.group(1)) for p in image_dir(root, split).iterdir() if (m := IMAGE_RE.match(p.name))}
        for subject in subjects:
            where[subject].append(split)
    return [
        f"{root}: subject {subject:03d} appears in splits {' and '.join(splits)} (evaluation leak)"
        for subject, splits in sorted(where.items())
        if len(splits) > 1
    ]


def iterate_batches(
    dataset: SliceDataset, batch_size: int, indices: Sequence[int] | None = None
) -> Iterator[dict[str, Any]]:
    """Batches in order (for evaluation and encoding), without a DataLoader."""
    order = list(range(len(dataset))) if indices is None else list(indices)
    for start in range(0, len(order), batch_size):
        yield dataset.__getitems__(order[start : start + batch_size])
