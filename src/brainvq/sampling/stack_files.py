"""``brainvq sample --volumes N``: generated stacks on disk, as a researcher uses them.

``OUT/`` gets, for stack n (subject id n + 1):

* ``stack_NNN.nii.gz``: the stack as a NIfTI volume (uint8, shape W x H x S) in the OASIS layout's world
  geometry (:mod:`brainvq.conform.geometry`: 1 mm pixels and slices, slice 0 most inferior), so it opens
  in any viewer the right way up;
* ``keras_png_slices_generated/case_NNN_slice_K.nii.png``: its slices in the OASIS layout, so every
  brainvq command that reads a data root reads the stacks (``--data OUT --split generated``);
* with a judge (``--labels JUDGE``): ``stack_NNN_labels.nii.gz``, the judge's tissue segmentation of the
  stack in the same grid (0 background, 1 CSF, 2 grey matter, 3 white matter), and its slices as OASIS
  masks (0/85/170/255, ``keras_png_slices_seg_generated/seg_NNN_slice_K.nii.png``): labelled synthetic
  data that ``--data OUT --split generated`` reads with its masks;
* ``stacks.png``: every stack in three orthogonal views through its centre (axial; then the planes
  through the middle row and the middle column, superior at the top);
* ``stacks.json``: the seed, the sampling settings, the times and the checkpoints' hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from brainvq.conform.geometry import PIXEL_MM, SLICE_MM, stack_volume
from brainvq.conform.mapback import save_nifti
from brainvq.data.layout import MASK_LEVELS, image_dir, image_name, mask_dir, mask_name
from brainvq.files import atomic_save_image, atomic_write_json
from brainvq.sampling.stacks import StackResult

SPLIT = "generated"


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)


def draw_stacks(run_root: str | Path, count: int, out: Path, *, seed: int = 0, device: str = "auto",
                judge: str | Path | None = None, **options: Any) -> dict[str, Any]:  # fmt: skip
    """``sample --volumes``: draw ``count`` stacks with the run's stack prior (``options`` go to
    :func:`sample_stacks`) and write them under ``out``, which must be new, empty or brainvq's; with a
    ``judge`` folder, each stack's tissue labels too."""
    from brainvq.errors import BrainVQError
    from brainvq.files import is_owned, mark_owned
    from brainvq.runs import load_run
    from brainvq.sampling.stacks import sample_stacks

    if count < 1:
        raise BrainVQError(f"--volumes must be at least 1, got {count}")
    if out.exists() and any(out.iterdir()) and not is_owned(out):
        raise BrainVQError(f"{out}: a folder brainvq did not make; give an empty or new --out")
    loaded_judge = None
    if judge is not None:
        from brainvq.evaluation.judge import load_judge

        loaded_judge = load_judge(judge, device)  # a bad judge folder is refused before drawing
    run = load_run(run_root, device)
    run.require_stack_prior()
    if loaded_judge is not None:
        loaded_judge.check_size(run.image_size, run_root)
    result = sample_stacks(run, count, seed=seed, **options)
    mark_owned(out, "stacks")
    labels = None
    if loaded_judge is not None:
        from brainvq.evaluation.stacks import stack_labels

        # the labels of the images as written, 8-bit
        labels = stack_labels(loaded_judge, to_uint8(result.images.numpy()).astype(np.float32) / 255)
    return write_stacks(result, out, labels=labels, record={
        "seed": seed, "sampling": result.sampling._asdict(), "coupling": result.coupling, "guidance": result.guidance,
        "candidates": result.candidates, "rivals": list(result.rivals), "first_map": result.first_map, "seconds": result.seconds,
        "seconds_per_stack": result.seconds / count, "top_seconds": result.top_seconds,
        "bottom_seconds": result.bottom_seconds, "redrawn_top_maps": result.redrawn_top_maps,
        "unresolved_top_maps": result.unresolved_top_maps, "vqvae_hash": run.vqvae_hash, "prior_hash": run.prior_hash,
        "judge_hash": loaded_judge.hash if loaded_judge is not None else None,
    })  # fmt: skip


def write_stacks(
    result: StackResult, out: Path, record: dict[str, Any], labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Write every stack of ``result`` (and its ``labels`` (N, S, H, W), if given) under ``out`` (see the
    module doc); returns the record written."""
    stacks = to_uint8(result.images.numpy())  # (N, S, H, W)
    volumes = write_volumes(stacks, out, "", image_dir(out, SPLIT), image_name, levels=None)
    record = {**record, "stacks": len(stacks), "slices": int(stacks.shape[1]), "volumes": volumes,
              "png_folder": str(image_dir(out, SPLIT))}  # fmt: skip
    if labels is not None:
        levels = np.array(MASK_LEVELS, dtype=np.uint8)
        record["label_volumes"] = write_volumes(labels, out, "_labels", mask_dir(out, SPLIT), mask_name, levels)
        record["label_png_folder"] = str(mask_dir(out, SPLIT))
    figure = views_figure({"stack": stacks}, out / "stacks.png")
    record["figure"] = str(figure)
    atomic_write_json(out / "stacks.json", record)
    return record


def write_volumes(
    stacks: np.ndarray,
    out: Path,
    suffix: str,
    folder: Path,
    name: Callable[[int, int], str],
    levels: np.ndarray | None,
) -> list[str]:
    """Each stack (N, S, H, W) uint8 as ``stack_NNN<suffix>.nii.gz`` and its slices as PNGs in ``folder``
    named by ``name(subject, slice)`` (labels mapped through ``levels``, if given); the NIfTI paths."""
    folder.mkdir(parents=True, exist_ok=True)
    volumes = []
    for number, stack in enumerate(stacks):
        subject = number + 1
        volume, affine = stack_volume(stack, pad=0)
        volumes.append(
            str(save_nifti(volume.astype(np.uint8), affine, out / f"stack_{subject:03d}{suffix}.nii.gz"))
        )
        for index, image in enumerate(stack if levels is None else levels[stack]):
            atomic_save_image(folder / name(subject, index), Image.fromarray(image))
    return volumes


def orthogonal_views(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axial (the middle slice, H x W), and the two reslices through the centre, superior at the top:
    sagittal (the middle row, S x W: the PNG's columns run posterior to anterior in the OASIS layout's
    geometry, :mod:`brainvq.conform.geometry`) and coronal (the middle column, S x H)."""
    slices, height, width = stack.shape
    axial = stack[slices // 2]
    along_columns = stack[::-1, height // 2, :]  # (S, W): the plane through the middle row
    along_rows = stack[::-1, :, width // 2]  # (S, H): the plane through the middle column
    return axial, along_columns, along_rows


def views_figure(groups: dict[str, np.ndarray], path: Path) -> Path:
    """Each named group of stacks (N, S, H, W) side by side, one stack per row: the axial middle slice,
    then the sagittal and coronal planes (slices drawn 4x taller, so 32 slices read as a brain's height)."""
    import matplotlib.pyplot as plt

    from brainvq.figures import save_figure

    rows = max(len(stacks) for stacks in groups.values())
    figure, axes = plt.subplots(rows, 3 * len(groups), figsize=(2.4 * 3 * len(groups), 2.2 * rows), squeeze=False)
    for group, (name, stacks) in enumerate(groups.items()):
        for row in range(rows):
            views = orthogonal_views(stacks[row]) if row < len(stacks) else ()
            for view_index in range(3):
                axis = axes[row, 3 * group + view_index]
                axis.set_axis_off()
                if views:
                    axis.imshow(
                        views[view_index],
                        cmap="gray",
                        vmin=0,
                        vmax=255,
                        aspect=4 * SLICE_MM / PIXEL_MM if view_index else 1.0,
                    )
            if row < len(stacks):
                axes[row, 3 * group].set_title(f"{name} {row + 1}", fontsize=8, loc="left")
            if row == 0:
                axes[row, 3 * group + 1].set_title("sagittal (middle)", fontsize=8)
                axes[row, 3 * group + 2].set_title("coronal (middle)", fontsize=8)
    return save_figure(figure, path)
