"""Maps made on conformed slices, written back to the scan's own voxel grid.

The registration's transform maps template points into the scan; its inverse takes every voxel of
the scan to the template, where the map is read (linearly, or nearest for labels). Voxels outside
the conformed slab get 0, and :func:`coverage_volume` marks the voxels the slab covers.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from brainvq.conform.geometry import stack_image
from brainvq.conform.registration import image_from_array
from brainvq.errors import DataError


def read_transform(path: Path) -> sitk.Transform:
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise DataError(f"{path}: not an ITK transform file ({str(error).strip().splitlines()[-1]})") from None


def to_source_grid(
    stack: np.ndarray,
    transform: sitk.Transform,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    nearest: bool = False,
) -> np.ndarray:
    """A (K, H, W) map on the conformed slices as an (X, Y, Z) array on the scan's own grid."""
    reference = image_from_array(np.zeros(shape, np.float32), affine)
    inverse = transform.GetInverse()  # scan points -> template points
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    moved = sitk.Resample(
        stack_image(stack.astype(np.float32)), reference, inverse, interpolator, 0.0, sitk.sitkFloat32
    )
    return np.transpose(sitk.GetArrayFromImage(moved), (2, 1, 0))  # (Z, Y, X) -> (X, Y, Z)


def coverage_volume(layout: tuple[int, int, int], transform: sitk.Transform, shape: tuple[int, int, int],
                    affine: np.ndarray) -> np.ndarray:  # fmt: skip
    """(X, Y, Z) uint8: 1 where the conformed slab covers the scan."""
    covered = to_source_grid(np.ones(layout, np.float32), transform, shape, affine, nearest=True)
    return (covered > 0.5).astype(np.uint8)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """``array`` with the scan's affine, written atomically."""
    from brainvq.files import atomic_write

    image = nib.Nifti1Image(array, affine)

    def write(tmp: Path) -> None:
        nib.save(image, str(tmp.with_suffix(".nii.gz")))
        tmp.with_suffix(".nii.gz").replace(tmp)

    atomic_write(Path(path), write)
    return Path(path)
