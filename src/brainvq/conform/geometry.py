"""The OASIS layout's place in the world: which way a slice PNG faces, and how far apart its slices are.

Established once from the data (``benchmarks/oasis_geometry.py``): the mean OASIS train slice was
matched against axial slices of the MNI152 2009a template (nilearn's package data) in every
orientation. Anterior at the PNG's right matched best (correlation 0.75-0.77 over slices 4, 16 and
28, against 0.46-0.60 with anterior at the left); slice K lies at about MNI z = K - 2 mm, so the
slices are 1 mm apart and slice 0 is the most inferior; the brain spans 168 x 137 pixels at slice
16 where MNI152's spans 181 x 145 mm, the 1.07 that separates the Talairach (1988) brain OASIS-1 is
registered to from MNI152's. So: 1 mm pixels, 1 mm slices, in Talairach space.

In a PNG, columns run posterior -> anterior and rows run across the head (left-right). Which row
direction is the subject's left cannot be told from the anatomy (the template is symmetric);
brainvq takes rows to run from the subject's right (row 0) to the left, as in a radiological axial
view turned so that anterior is on the right. Were it the other way, conformed slices would be
mirror images of what OASIS shows for the same head, which a model of OASIS cannot tell apart;
maps written back to a scan (:mod:`brainvq.conform.mapback`) land where they belong either way,
because they go back through the same transform.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

PIXEL_MM = 1.0
SLICE_MM = 1.0
FIRST_SLICE_Z_MM = -2.0  # slice 0 at about MNI z = -2 mm (the basal ganglia; slice 31 above the ventricles)

# SimpleITK works in LPS: +x = subject's left, +y = posterior, +z = superior.
# The stack's index (i, j, k) = (PNG column, PNG row, slice): columns run to anterior (-y), rows to
# the subject's left (+x), slices to superior (+z).
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # row-major 3x3: columns are the index axes


class Layout(NamedTuple):
    """A slice stack's grid: ``slices`` of ``height`` x ``width`` pixels."""

    slices: int
    height: int
    width: int


def stack_image(stack: np.ndarray) -> sitk.Image:
    """A (K, H, W) slice stack as a SimpleITK image in the OASIS layout's world geometry, centred
    in-plane on the origin, slice 0 at :data:`FIRST_SLICE_Z_MM`."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(stack, dtype=np.float32))  # (K, H, W) -> index (W, H, K)
    image.SetSpacing((PIXEL_MM, PIXEL_MM, SLICE_MM))
    image.SetDirection(DIRECTION)
    height, width = stack.shape[1:]
    corner = np.array([-(width - 1) / 2 * PIXEL_MM, -(height - 1) / 2 * PIXEL_MM, FIRST_SLICE_Z_MM])
    direction = np.array(DIRECTION).reshape(3, 3)
    image.SetOrigin(tuple(float(v) for v in direction @ corner))
    return image


def stack_array(image: sitk.Image) -> np.ndarray:
    """The (K, H, W) array of an image on the layout's grid."""
    return sitk.GetArrayFromImage(image)


def nifti_affine(layout: Layout) -> np.ndarray:
    """The RAS affine (nibabel) of a stack written as a NIfTI volume of shape (W, H, K): voxel (i, j, k)
    is PNG column i, row j, slice k."""
    reference = stack_image(np.zeros(layout, dtype=np.float32))
    direction = np.array(reference.GetDirection()).reshape(3, 3) * np.array(reference.GetSpacing())
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction  # LPS -> RAS
    affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.array(reference.GetOrigin())
    return affine


def stack_volume(
    stack: np.ndarray, *, pad: int = 0, move: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A (K, H, W) stack as a volume (W, H, K + 2 pad) and its RAS affine, with ``pad`` empty slices
    below and above, optionally moved in the world by a 4x4 ``move`` (the affine changes, the voxels do
    not)."""
    volume = np.transpose(np.pad(stack, ((pad, pad), (0, 0), (0, 0))), (2, 1, 0))  # (K, H, W) -> (W, H, K+2p)
    below = np.eye(4)
    below[2, 3] = -pad
    affine = nifti_affine(Layout(*stack.shape)) @ below
    return volume, (move if move is not None else np.eye(4)) @ affine


def reorient(
    volume: np.ndarray, affine: np.ndarray, order: tuple[int, int, int], flips: tuple[bool, bool, bool]
) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored another way: voxel axes permuted to ``order`` and flipped where ``flips``
    says; the affine follows, so world positions do not change."""
    permuted = np.transpose(volume, order)
    to_old = np.zeros((4, 4))
    to_old[3, 3] = 1
    for new_axis, old_axis in enumerate(order):
        to_old[old_axis, new_axis] = 1
    for axis, flip in enumerate(flips):
        if flip:
            permuted = np.flip(permuted, axis)
            flip_matrix = np.eye(4)
            flip_matrix[axis, axis], flip_matrix[axis, 3] = -1, permuted.shape[axis] - 1
            to_old = to_old @ flip_matrix
    return np.ascontiguousarray(permuted), affine @ to_old
