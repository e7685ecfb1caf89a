"""Reading one slice: 8- and 16-bit grayscale PNGs (RGB and palette images refused with a reason),
tissue masks, and the intensity scale of a dataset's bit depth."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from brainvq.data.layout import (
    MASK_LEVELS,
    PNG_SIGNATURE,
    SliceRecord,
)
from brainvq.errors import DataError


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
