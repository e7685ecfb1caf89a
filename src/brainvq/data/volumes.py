"""Reading volumes: NIfTI / Analyze / MGH files found under a folder, put in canonical (RAS+)
orientation, scaled robustly, and cut into square slices of the requested size."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from brainvq.errors import DataError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".mgz")
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
DEFAULT_SUBJECT_PATTERN = r"(?:sub-|OAS1_|IXI)?(\d+)"
DEFAULT_LABEL_MAP = {0: 0, 1: 85, 2: 170, 3: 255}  # FSL FAST / OASIS: background, CSF, GM, WM
MANIFEST_FIELDS = ("png", "split", "subject", "slice", "voxel_index", "axis", "source", "orientation", "labels")


@dataclass(frozen=True)
class SliceOptions:
    """How volumes become slices (see :func:`slice_volumes`)."""

    axis: str = "axial"
    num_slices: int | None = 32
    slice_range: tuple[int, int] | None = None
    size: int = 256
    bits: int = 8
    percentiles: tuple[float, float] = (0.5, 99.5)
    label_map: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_LABEL_MAP))
    head_threshold: float = 0.1

    def check(self) -> None:
        if self.axis not in AXES:
            raise DataError(f"--axis must be one of {', '.join(AXES)}, got {self.axis!r}")
        if self.bits not in (8, 16):
            raise DataError(f"--bits must be 8 or 16, got {self.bits}")
        if self.size < 8:
            raise DataError(f"--size must be at least 8, got {self.size}")
        if self.num_slices is None and self.slice_range is None:
            raise DataError("give --slices N or --range A:B")
        if self.num_slices is not None and self.num_slices < 1:
            raise DataError(f"--slices must be at least 1, got {self.num_slices}")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise DataError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
        if any(v not in (0, 85, 170, 255) for v in self.label_map.values()):
            raise DataError(f"label map values must be grey levels 0/85/170/255, got {self.label_map}")


# ----------------------------------------------------------------------------- finding volumes
def is_volume(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(suffix) for suffix in VOLUME_SUFFIXES)


def find_volumes(folder: Path) -> list[Path]:
    """Every volume under ``folder`` (recursive); an ``.img`` without its ``.hdr`` is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: volume folder does not exist")
    paths = sorted(p for p in folder.rglob("*") if is_volume(p) and not p.name.startswith("."))
    for image in sorted(folder.rglob("*.img")):
        if not image.with_suffix(".hdr").is_file():
            raise DataError(f"{image}: Analyze image without its header ({image.with_suffix('.hdr').name})")
    if not paths:
        raise DataError(f"{folder}: no volumes found (.nii, .nii.gz, .hdr/.img, .mgz)")
    return paths


# ----------------------------------------------------------------------------- one volume
def load_canonical(path: Path, *, labels: bool = False) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """A volume in closest-canonical RAS+ orientation: (data (X, Y, Z), voxel sizes, source axis codes)."""
    import nibabel as nib

    try:
        image: Any = nib.load(str(path))
        orientation = "".join(str(c) for c in nib.aff2axcodes(image.affine))
        if len(image.shape) == 4 and image.shape[3] == 1:
            image = image.slicer[..., 0]
        if len(image.shape) == 4:
            raise DataError(f"{path}: 4D volume with {image.shape[3]} frames; expected one (3D)")
        if len(image.shape) != 3:
            raise DataError(f"{path}: {len(image.shape)}D image of shape {image.shape}; expected a 3D volume")
        canonical = nib.as_closest_canonical(image)
        data = np.asanyarray(canonical.dataobj)
        data = data.astype(np.int64 if labels else np.float32, copy=False)
    except DataError:
        raise
    except Exception as error:  # nibabel raises many types for unreadable or truncated files
        raise DataError(f"{path}: unreadable volume ({type(error).__name__}: {error})") from None
    zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    return data, (zooms[0], zooms[1], zooms[2]), orientation


def robust_scale(volume: np.ndarray, percentiles: tuple[float, float], path: Path) -> np.ndarray:
    """Scale to [0, 1] between the volume's low and high percentiles (clipped)."""
    if not np.isfinite(volume).all():
        raise DataError(f"{path}: volume contains NaN or infinite voxels")
    sample = volume.ravel()[:: max(1, volume.size // 2_000_000)]  # percentiles of up to 2M voxels
    low, high = np.percentile(sample, percentiles)
    if high <= low:
        low, high = float(volume.min()), float(volume.max())
    if high <= low:
        raise DataError(f"{path}: every voxel has the same value ({low}); nothing to slice")
    return np.clip((volume - low) / (high - low), 0.0, 1.0, dtype=np.float32)


def head_extent(scaled: np.ndarray, axis: int, threshold: float) -> tuple[int, int]:
    """First and last slice along ``axis`` that hold head voxels (above ``threshold`` of the range)."""
    other = tuple(a for a in range(3) if a != axis)
    foreground = (scaled > threshold).sum(axis=other)
    keep = np.flatnonzero(foreground >= max(1, 0.01 * foreground.max()))
    return int(keep[0]), int(keep[-1])


def choose_slices(scaled: np.ndarray, options: SliceOptions, path: Path) -> list[int]:
    """Voxel indices along the slicing axis, inferior to superior (see :class:`SliceOptions`)."""
    axis = AXES[options.axis]
    depth = scaled.shape[axis]
    if options.slice_range is not None:
        first, stop = options.slice_range
        if not 0 <= first < stop <= depth:
            raise DataError(f"{path}: --range {first}:{stop} is outside the volume's 0:{depth} slices")
        last = stop - 1
    else:
        first, last = head_extent(scaled, axis, options.head_threshold)
    available = last - first + 1
    count = options.num_slices if options.num_slices is not None else available
    if count > available:
        raise DataError(
            f"{path}: asked for {count} slices but the {'range' if options.slice_range else 'head'} "
            f"spans only {available} (voxels {first}..{last} along the {options.axis} axis)"
        )
    return [int(v) for v in np.linspace(first, last, count).round()]


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One slice as an image (rows top to bottom): anterior/superior up, subject's right on the right."""
    where: list[Any] = [slice(None)] * 3
    where[axis] = index
    plane = volume[tuple(where)]  # (X, Y, Z) -> (X, Y), (X, Z) or (Y, Z), a view
    return np.ascontiguousarray(plane.T[::-1])  # (a, b) -> (b reversed, a): rows = b from high to low


def in_plane_spacing(zooms: tuple[float, float, float], axis: int) -> tuple[float, float]:
    """(column, row) pixel spacing of :func:`take_slice` images."""
    kept = [zooms[a] for a in range(3) if a != axis]
    return kept[0], kept[1]


def resample_square(plane: np.ndarray, spacing: tuple[float, float], size: int, *, nearest: bool) -> np.ndarray:
    """Pad to a square field of view (in millimetres) and resize to ``size`` x ``size`` with Pillow."""
    rows, cols = plane.shape
    width_mm, height_mm = cols * spacing[0], rows * spacing[1]
    pixel_mm = max(width_mm, height_mm) / size
    new_cols = max(1, min(size, round(width_mm / pixel_mm)))
    new_rows = max(1, min(size, round(height_mm / pixel_mm)))
    if nearest:
        resized = np.asarray(
            Image.fromarray(plane.astype(np.uint8)).resize((new_cols, new_rows), Image.Resampling.NEAREST)
        )
    else:
        resized = np.asarray(
            Image.fromarray(plane.astype(np.float32), mode="F").resize(
                (new_cols, new_rows), Image.Resampling.BILINEAR
            )
        )
    out = np.zeros((size, size), dtype=resized.dtype)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    out[top : top + new_rows, left : left + new_cols] = resized
    return out


def map_labels(labels: np.ndarray, label_map: dict[int, int], path: Path) -> np.ndarray:
    """Label values -> uint8 grey levels; a value missing from the map is an error."""
    values = np.unique(labels)
    if values.size and values.min() < 0:
        raise DataError(f"{path}: negative label values ({int(values.min())})")
    unknown = [int(v) for v in values if int(v) not in label_map]
    if unknown:
        raise DataError(f"{path}: label values {unknown[:5]} are not in the label map {label_map}")
    lookup = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.uint8)
    for value, level in label_map.items():
        if 0 <= value < len(lookup):
            lookup[value] = level
    return lookup[labels]


def _save_png(array: np.ndarray, path: Path, bits: int) -> None:
    if bits == 16:
        Image.fromarray((array * 65535.0 + 0.5).astype(np.uint16)).save(path, compress_level=1)
    else:
        Image.fromarray((array * 255.0 + 0.5).astype(np.uint8), mode="L").save(path, compress_level=1)
