"""Reading slices: the OASIS PNG layout, plain PNG folders, validation of bad input, in-memory datasets.

OASIS layout (as distributed in ``keras_png_slices_data``)::

    ROOT/keras_png_slices_{train,validate,test}/case_NNN_slice_K.nii.png
    ROOT/keras_png_slices_seg_{train,validate,test}/seg_NNN_slice_K.nii.png   (optional masks)

A plain folder of PNGs is also accepted; its subject and slice ids are unknown (-1).
Every problem is reported as a :class:`DataError` whose message names the file and the problem.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from brainvq.errors import DataError

SPLITS = ("train", "validate", "test")
IMAGE_RE = re.compile(r"^case_(\d+)_slice_(\d+)\.nii\.png$")
MASK_RE = re.compile(r"^seg_(\d+)_slice_(\d+)\.nii\.png$")
MASK_LEVELS = (0, 85, 170, 255)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_dir(root: Path, split: str) -> Path:
    return Path(root) / f"keras_png_slices_{split}"


def mask_dir(root: Path, split: str) -> Path:
    return Path(root) / f"keras_png_slices_seg_{split}"


def image_name(subject: int, slice_index: int) -> str:
    return f"case_{subject:03d}_slice_{slice_index}.nii.png"


def mask_name(subject: int, slice_index: int) -> str:
    return f"seg_{subject:03d}_slice_{slice_index}.nii.png"


def is_oasis_root(root: Path) -> bool:
    """True when ``root`` holds at least one ``keras_png_slices_*`` folder."""
    return Path(root).is_dir() and any(Path(root).glob("keras_png_slices_*"))


def available_splits(root: Path) -> list[str]:
    """The standard splits present under an OASIS root, in train/validate/test order."""
    return [split for split in SPLITS if image_dir(root, split).is_dir()]


@dataclass(frozen=True)
class SliceRecord:
    """One slice on disk. ``subject``/``slice_index`` are -1 when unknown (plain folders)."""

    path: Path
    split: str
    subject: int = -1
    slice_index: int = -1
    mask_path: Path | None = None


@dataclass
class SplitScan:
    """What listing a split's folder found: its records and the problems met on the way."""

    split: str
    folder: Path
    records: list[SliceRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    has_masks: bool = False


def _png_files(folder: Path, problems: list[str]) -> list[Path]:
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() != ".png":
            problems.append(f"{path}: not a PNG file (unexpected file in an image folder)")
            continue
        files.append(path)
    return files


def _parse_names(files: list[Path], pattern: re.Pattern[str], problems: list[str]) -> dict[tuple[int, int], Path]:
    parsed: dict[tuple[int, int], Path] = {}
    for path in files:
        match = pattern.match(path.name)
        if match is None:
            expected = "case_NNN_slice_K.nii.png" if pattern is IMAGE_RE else "seg_NNN_slice_K.nii.png"
            problems.append(f"{path}: cannot parse the OASIS file name (expected {expected})")
            continue
        parsed[(int(match.group(1)), int(match.group(2)))] = path
    return parsed


def scan_split(root: str | Path, split: str) -> SplitScan:
    """List one split: OASIS names parsed, masks paired, problems collected (files are not read)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: data root is not a folder")
    if not is_oasis_root(root):
        return _scan_plain_folder(root, split)
    folder = image_dir(root, split)
    if not folder.is_dir():
        found = ", ".join(available_splits(root)) or "none"
        raise DataError(f"{folder}: split '{split}' is missing (splits found: {found})")
    scan = SplitScan(split=split, folder=folder)
    images = _parse_names(_png_files(folder, scan.problems), IMAGE_RE, scan.problems)
    masks: dict[tuple[int, int], Path] = {}
    if mask_dir(root, split).is_dir():
        scan.has_masks = True
        masks = _parse_names(_png_files(mask_dir(root, split), scan.problems), MASK_RE, scan.problems)
        for key in sorted(set(images) - set(masks)):
            scan.problems.append(f"{images[key]}: image has no mask ({mask_dir(root, split) / mask_name(*key)})")
        for key in sorted(set(masks) - set(images)):
            scan.problems.append(f"{masks[key]}: mask has no image ({folder / image_name(*key)})")
    for (subject, slice_index), path in sorted(images.items()):
        scan.records.append(SliceRecord(path, split, subject, slice_index, masks.get((subject, slice_index))))
    if not scan.records and not scan.problems:
        scan.problems.append(f"{folder}: split '{split}' is empty (no case_*.png images)")
    return scan


PLAIN_VALIDATE_FRACTION = 0.1
PLAIN_SPLIT_SEED = 0


def plain_folder_split(files: Sequence[Path], split: str, root: Path) -> list[Path]:
    """The stated rule for a plain folder of PNGs: ``validate`` is a seeded 10 % of its files
    (permutation seed 0 of the sorted names, at least one file), ``train`` the other 90 %, ``all``
    every file. A plain folder has no ``test`` split."""
    if split == "all":
        return list(files)
    if split not in ("train", "validate"):
        raise DataError(
            f"{root}: a plain folder of PNGs has the splits 'train' and 'validate' (a seeded "
            f"{PLAIN_VALIDATE_FRACTION:.0%} of its files) and 'all', not '{split}'"
        )
    order = np.random.default_rng(PLAIN_SPLIT_SEED).permutation(len(files))
    num_val = max(1, round(PLAIN_VALIDATE_FRACTION * len(files))) if len(files) > 1 else 0
    chosen = set(order[:num_val].tolist())
    keep = (lambda i: i in chosen) if split == "validate" else (lambda i: i not in chosen)
    return [path for i, path in enumerate(files) if keep(i)]


def record_slice(record: SliceRecord) -> int:
    """A slice's index: the record's own (OASIS layout, a samples record), else from an OASIS-style
    file name (``case_NNN_slice_K``) in a plain folder, else -1 (unknown)."""
    if record.slice_index >= 0:
        return record.slice_index
    match = IMAGE_RE.match(record.path.name)
    return int(match.group(2)) if match else -1


SAMPLES_RECORD = "samples.json"  # what `brainvq sample` writes beside its slices (and grid.png)


def _sample_records(root: Path, split: str, problems: list[str]) -> list[SliceRecord]:
    """The slices a ``samples.json`` lists (not ``grid.png``), with the slice indices they were
    drawn for, so that every command reading a folder of slices reads what ``sample`` writes."""
    record = root / SAMPLES_RECORD
    try:
        data = json.loads(record.read_text())
        names = [Path(p).name for p in data.get("images", [])]
    except (ValueError, AttributeError, TypeError):
        problems.append(f"{record}: not a brainvq samples record (unreadable JSON)")
        return []
    if not names:
        problems.append(f"{record}: lists no images")
    slices = dict(zip(names, data.get("slices") or [], strict=False))
    for name in names:
        if not (root / name).is_file():
            problems.append(f"{root / name}: listed in {record} but missing")
    files = plain_folder_split([root / name for name in names], split, root)
    return [SliceRecord(path, split, -1, int(slices.get(path.name, -1))) for path in files]


def _scan_plain_folder(root: Path, split: str) -> SplitScan:
    scan = SplitScan(split=split, folder=root)
    if (root / SAMPLES_RECORD).is_file():
        scan.records = _sample_records(root, split, scan.problems)
        return scan
    files = plain_folder_split(_png_files(root, scan.problems), split, root)
    scan.records = [SliceRecord(path, split) for path in files]
    if not files and not scan.problems:
        scan.problems.append(f"{root}: no PNG images in split '{split}' and no keras_png_slices_* folders")
    return scan


def read_png(path: Path) -> np.ndarray:
    """Read a grayscale PNG as uint8 or uint16 (H, W); DataError names the file on any problem.

    RGB/RGBA (or palette) images whose colour channels are equal are accepted as grayscale.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            if handle.read(8) != PNG_SIGNATURE:
                raise DataError(f"{path}: not a PNG file (bad signature)")
        with Image.open(path) as image:
            image.load()
            return _to_gray(image, path)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: corrupt or truncated PNG ({error})") from None


def _to_gray(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise DataError(f"{path}: 32-bit integer PNG with values outside 0..65535")
        return array.astype(np.uint16)
    if mode == "1":
        return np.asarray(image, dtype=np.uint8) * 255
    if mode == "LA":
        return np.asarray(image.getchannel("L"), dtype=np.uint8)
    if mode in ("RGB", "RGBA", "P", "PA"):
        rgb = np.asarray(image.convert("RGB"))
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise DataError(f"{path}: colour image (mode {mode} with unequal channels); expected grayscale")
        return np.ascontiguousarray(rgb[..., 0])
    raise DataError(f"{path}: unsupported PNG mode {mode}; expected grayscale")


def read_mask(path: Path) -> np.ndarray:
    """Read a mask PNG with levels 0/85/170/255 as int64 labels 0..3."""
    array = read_png(path)
    if array.dtype != np.uint8:
        raise DataError(f"{path}: mask must be 8-bit with levels 0/85/170/255")
    bad = ~np.isin(array, MASK_LEVELS)
    if bad.any():
        raise DataError(f"{path}: mask has values other than 0/85/170/255 (e.g. {int(array[bad][0])})")
    return (array // 85).astype(np.int64)


def select_records(
    records: Sequence[SliceRecord], limit_subjects: int | None, limit_images: int | None
) -> list[SliceRecord]:
    """Deterministic subsets: the first ``limit_subjects`` subjects by id, then ``limit_images``
    images spread evenly over what is left (so a small subset still covers subjects and slices)."""
    chosen = list(records)
    if limit_subjects is not None:
        subjects = sorted({r.subject for r in chosen})[:limit_subjects]
        keep = set(subjects)
        chosen = [r for r in chosen if r.subject in keep]
    if limit_images is not None and limit_images < len(chosen):
        positions = np.linspace(0, len(chosen) - 1, num=max(limit_images, 0)).round().astype(int)
        chosen = [chosen[i] for i in positions]
    return chosen


def _read_all(paths: Sequence[Path]) -> tuple[list[np.ndarray | None], list[str]]:
    def attempt(path: Path) -> tuple[np.ndarray | None, str | None]:
        try:
            return read_png(path), None
        except DataError as error:
            return None, str(error)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, paths))
    return [r[0] for r in results], [r[1] for r in results if r[1] is not None]


def _stack_images(records: Sequence[SliceRecord], arrays: Sequence[np.ndarray]) -> np.ndarray:
    shape = arrays[0].shape
    for record, array in zip(records, arrays, strict=True):
        if array.shape != shape:
            raise DataError(
                f"{record.path}: image size {array.shape[1]}x{array.shape[0]} differs from "
                f"{shape[1]}x{shape[0]} ({records[0].path.name}); all slices must share one size"
            )
    dtype = np.uint16 if any(a.dtype == np.uint16 for a in arrays) else np.uint8
    if dtype == np.uint16:
        arrays = [a.astype(np.uint16) * 257 if a.dtype == np.uint8 else a for a in arrays]
    return np.stack(arrays).astype(dtype)


BIT_DEPTHS = (10, 12, 14, 16)


def intensity_scale(dtype: np.dtype[Any] | type, max_value: int) -> float:
    """The value that maps to 1.0: 255 for 8-bit data; for 16-bit PNGs the full range of the smallest
    bit depth of 10, 12, 14 or 16 bits that holds the data's maximum (a 12-bit MRI export stored in
    16-bit PNGs is divided by 4095, not 65535). One scale per dataset, so slices keep their contrast."""
    if np.dtype(dtype) == np.uint8:
        return 255.0
    for bits in BIT_DEPTHS:
        if max_value <= 2**bits - 1:
            return float(2**bits - 1)
    return 65535.0


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


@dataclass(frozen=True)
class ImageStats:
    """What check-data needs of one image, without keeping its pixels."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    low: int
    high: int


def _read_stats(paths: Sequence[Path]) -> tuple[list[ImageStats | None], list[str]]:
    """Shape, dtype and range of every image, read in threads; pixels are dropped as they go."""

    def attempt(path: Path) -> tuple[ImageStats | None, str | None]:
        try:
            array = read_png(path)
        except DataError as error:
            return None, str(error)
        return ImageStats(array.shape, array.dtype, int(array.min()), int(array.max())), None

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, paths))
    return [r[0] for r in results], [r[1] for r in results if r[1] is not None]


def check_data_root(root: str | Path) -> None:
    """Raise DataError unless ``root`` exists and is a folder (before a run is touched)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: data root is not a folder")


def summarize_split(root: str | Path, split: str) -> tuple[dict[str, Any], list[str]]:
    """Everything ``check-data`` reports for one split: counts, slices per subject, size, range, problems."""
    scan = scan_split(root, split)
    problems = list(scan.problems)
    stats, read_problems = _read_stats([r.path for r in scan.records])
    problems += read_problems
    good = [(r, a) for r, a in zip(scan.records, stats, strict=True) if a is not None]
    sizes: dict[tuple[int, ...], int] = defaultdict(int)
    for _, array in good:
        sizes[array.shape] += 1
    if len(sizes) > 1:
        common = max(sizes, key=lambda s: sizes[s])
        for record, array in good:
            if array.shape != common:
                problems.append(
                    f"{record.path}: image size {array.shape[1]}x{array.shape[0]} differs from "
                    f"the split's {common[1]}x{common[0]}"
                )
    for record in scan.records:
        if record.mask_path is not None:
            try:
                read_mask(record.mask_path)
            except DataError as error:
                problems.append(str(error))
    per_subject: dict[int, set[int]] = defaultdict(set)
    for record in scan.records:
        per_subject[record.subject].add(record.slice_index)
    known = {s: v for s, v in per_subject.items() if s >= 0}
    counts = [len(v) for v in known.values()]
    expected = max((max(v) for v in known.values()), default=-1) + 1
    missing = {f"{s:03d}": sorted(set(range(expected)) - v) for s, v in sorted(known.items()) if len(v) < expected}
    for subject, slices in missing.items():
        problems.append(f"{scan.folder}: subject {subject} is missing slices {slices}")
    dtypes = sorted({str(a.dtype) for _, a in good})
    wide = any(a.dtype == np.uint16 for _, a in good)
    scale = intensity_scale(np.uint16 if wide else np.uint8, max((a.high for _, a in good), default=0))
    lift = lambda a: 257 if wide and a.dtype == np.uint8 else 1  # noqa: E731
    lows = [a.low * lift(a) / scale for _, a in good]
    highs = [a.high * lift(a) / scale for _, a in good]
    summary = {
        "folder": str(scan.folder),
        "images": len(scan.records),
        "subjects": len(known),
        "slices_per_subject": {"min": min(counts), "max": max(counts)} if counts else None,
        "subjects_missing_slices": missing,
        "image_size": [list(s)[::-1] for s in sorted(sizes)],
        "dtype": dtypes,
        "intensity_range": [min(lows), max(highs)] if good else None,
        "intensity_scale": scale,
        "masks": sum(1 for r in scan.records if r.mask_path is not None) if scan.has_masks else 0,
    }
    return summary, problems


def check_data(root: str | Path) -> dict[str, Any]:
    """The ``check-data`` report for a data root: ``{"root", "layout", "splits": {...}, "problems": [...]}``."""
    root = Path(root)
    check_data_root(root)
    splits = available_splits(root) if is_oasis_root(root) else ["all"]
    if is_oasis_root(root) and not splits:
        raise DataError(f"{root}: holds keras_png_slices_* folders but none of train/validate/test")
    report: dict[str, Any] = {"root": str(root), "layout": "oasis" if is_oasis_root(root) else "folder"}
    report["splits"], report["problems"] = {}, []
    for split in splits:
        summary, problems = summarize_split(root, split)
        report["splits"][split] = summary
        report["problems"] += problems
    report["problems"] += find_leaks(root)
    return report


def iterate_batches(
    dataset: SliceDataset, batch_size: int, indices: Sequence[int] | None = None
) -> Iterator[dict[str, Any]]:
    """Batches in order (for evaluation and encoding), without a DataLoader."""
    order = list(range(len(dataset))) if indices is None else list(indices)
    for start in range(0, len(order), batch_size):
        yield dataset.__getitems__(order[start : start + batch_size])
