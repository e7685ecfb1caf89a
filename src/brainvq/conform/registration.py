"""Registering a scan to the template: rigid (and optionally then affine, 12 parameters), multi-resolution, Mattes
mutual information, with the template's brain as the fixed mask (SimpleITK, the ITK registration
framework: made for this, and kept by the Insight Toolkit community).

The scan starts where its own orientation puts it (its affine, whatever the stored axis order), with
the centres of mass aligned; so RAS, LAS, LPI or permuted axes all start from the right orientation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from brainvq.errors import DataError

LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS


class Scan(NamedTuple):
    """A scan read for registration: intensities scaled to [0, 1], as a SimpleITK image in LPS world."""

    image: sitk.Image
    shape: tuple[int, int, int]
    affine: np.ndarray  # the file's own voxel -> RAS affine (for maps written back)
    orientation: str  # its axis codes, e.g. "LAS"


class Registration(NamedTuple):
    transform: sitk.Transform  # maps template (fixed) points to scan (moving) points
    metric: float  # final Mattes mutual information (lower is better; negative)
    seconds: float


def read_scan(path: Path) -> Scan:
    """Read a NIfTI / Analyze / MGH volume (3D, or 4D with one frame) with nibabel, check it, scale it
    robustly to [0, 1] and place it in the world by its affine."""
    from brainvq.data.volumes import robust_scale

    try:
        volume: Any = nib.load(str(path))
        if len(volume.shape) == 4 and volume.shape[3] == 1:
            volume = volume.slicer[..., 0]
        data = np.asanyarray(volume.dataobj).astype(np.float32)
    except Exception as error:  # nibabel raises many types for unreadable files
        raise DataError(f"{path}: unreadable volume ({type(error).__name__}: {error})") from None
    if data.ndim == 4:
        raise DataError(f"{path}: 4D volume with {data.shape[3]} frames; expected one (3D)")
    if data.ndim != 3:
        raise DataError(f"{path}: {data.ndim}D image of shape {data.shape}; expected a 3D volume")
    scaled = robust_scale(data, (0.5, 99.5), path)
    return Scan(image_from_array(scaled, volume.affine), tuple(data.shape), np.asarray(volume.affine, float),
                "".join(str(c) for c in nib.aff2axcodes(volume.affine)))  # fmt: skip


def image_from_array(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A voxel array (X, Y, Z) with its RAS affine as a SimpleITK image (index (i, j, k) = voxel (x, y, z))."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))  # (X, Y, Z) -> (Z, Y, X)
    linear = LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if not np.all(spacing > 0):
        raise DataError("the volume's affine has a zero voxel size")
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (linear / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in LPS @ affine[:3, 3]))
    return image


def _method(shrink: tuple[int, ...], smooth: tuple[float, ...], iterations: int) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed=0)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )  # fmt: skip
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(smooth))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


TRANSFORMS = ("rigid", "affine")


def register(
    fixed: sitk.Image, fixed_mask: sitk.Image, moving: sitk.Image, transform: str = "rigid"
) -> Registration:
    """Rigid (6 parameters) over two resolutions (4x and 2x coarser, smoothed 3 and 1.5 mm) and, with
    ``transform="affine"``, then affine (12); the transform maps template points into the scan.

    Rigid is the default: on OASIS's own held-out subjects (already in atlas space, so the true
    answer is the rigid move alone) the affine stage, fitted to the mean template's 32-mm slab, bends
    every subject toward the mean (determinant 0.89 for one subject) and the per-slice correlation
    with the subject's own slices falls from 0.98 to 0.73-0.90 (docs/experiments/2026-12-06-conform.md).
    """
    import os
    import time

    if transform not in TRANSFORMS:
        raise DataError(f"the transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    started = time.perf_counter()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(
        max(1, os.cpu_count() or 1)
    )  # sched_getaffinity is Linux-only
    rigid = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    first = _method(
        (4, 2), (3.0, 1.5), 300
    )  # a full-resolution level fits the blurry mean's noise, not the anatomy
    first.SetMetricFixedMask(fixed_mask)
    first.SetInitialTransform(rigid, inPlace=True)
    first.Execute(fixed, moving)
    if transform == "rigid":
        return Registration(rigid, float(first.GetMetricValue()), time.perf_counter() - started)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine.SetCenter(rigid.GetCenter())
    second = _method((2, 1), (1.0, 0.0), 200)
    second.SetMetricFixedMask(fixed_mask)
    second.SetInitialTransform(affine, inPlace=True)
    second.Execute(fixed, moving)
    return Registration(affine, float(second.GetMetricValue()), time.perf_counter() - started)


def resample(
    moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform, *, nearest: bool = False
) -> sitk.Image:
    """The scan on the template's grid (outside the scan: 0)."""
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(moving, reference, transform, interpolator, 0.0, moving.GetPixelID())


def coverage(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """(K, H, W) bool: where the template's grid falls inside the scan."""
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8)
    ones.CopyInformation(moving)
    ones = ones + 1
    return sitk.GetArrayFromImage(sitk.Resample(ones, reference, transform, sitk.sitkNearestNeighbor, 0)) > 0
