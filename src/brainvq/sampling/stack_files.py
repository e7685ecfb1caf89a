"""``brainvq sample --volumes N``: generated stacks on disk, as a researcher uses them.

``OUT/`` gets, for stack n (subject id n + 1):

* ``stack_NNN.nii.gz``: the stack as a NIfTI volume (uint8, shape W x H x S) in the OASIS layout's world
  geometry (:mod:`brainvq.conform.geometry`: 1 mm pixels and slices, slice 0 most inferior), so it opens
  in any viewer the right way up;
* ``keras_png_slices_generated/case_NNN_slice_K.nii.png``: its slices in the OASIS layout, so every
  brainvq command that reads a data root reads the stacks (``--data OUT --split generated``);
* ``stacks.png``: every stack in three orthogonal views through its centre;
* ``stacks.json``: the seed, the sampling settings, the times and the checkpoints' hashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from brainvq.conform.geometry import PIXEL_MM, SLICE_MM, stack_volume
from brainvq.conform.mapback import save_nifti
from brainvq.files import atomic_save_image, atomic_write_json
from brainvq.sampling.stacks import StackResult

SPLIT = "generated"


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)


def draw_stacks(run_root: str | Path, count: int, out: Path, *, seed: int = 0, device: str = "auto",
                **options: Any) -> dict[str, Any]:  # fmt: skip
    """``sample --volumes``: draw ``count`` stacks with the run's stack prior (``options`` go to
    :func:`sample_stacks`) and write them under ``out``, which must be new, empty or brainvq's."""
    from brainvq.errors import BrainVQError
    from brainvq.files import is_owned, mark_owned
    from brainvq.runs import load_run
    from brainvq.sampling.stacks import sample_stacks

    if count < 1:
        raise BrainVQError(f"--volumes must be at least 1, got {count}")
    if out.exists() and any(out.iterdir()) and not is_owned(out):
        raise BrainVQError(f"{out}: a folder brainvq did not make; give an empty or new --out")
    run = load_run(run_root, device)
    run.require_stack_prior()
    result = sample_stacks(run, count, seed=seed, **options)
    mark_owned(out, "stacks")
    return write_stacks(result, out, {
        "seed": seed, "sampling": result.sampling._asdict(), "seconds": result.seconds,
        "seconds_per_stack": result.seconds / count, "top_seconds": result.top_seconds,
        "bottom_seconds": result.bottom_seconds, "vqvae_hash": run.vqvae_hash, "prior_hash": run.prior_hash,
    })  # fmt: skip


def write_stacks(result: StackResult, out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write every stack of ``result`` under ``out`` (see the module doc); returns the record written."""
    folder = out / f"keras_png_slices_{SPLIT}"
    folder.mkdir(parents=True, exist_ok=True)
    volumes = []
    stacks = to_uint8(result.images.numpy())  # (N, S, H, W)
    for number, stack in enumerate(stacks):
        subject = number + 1
        volume, affine = stack_volume(stack, pad=0)
        volumes.append(str(save_nifti(volume.astype(np.uint8), affine, out / f"stack_{subject:03d}.nii.gz")))
        for index, image in enumerate(stack):
            atomic_save_image(folder / f"case_{subject:03d}_slice_{index}.nii.png", Image.fromarray(image))
    figure = views_figure(stacks, out / "stacks.png", [f"stack {n + 1}" for n in range(len(stacks))])
    record = {**record, "stacks": len(stacks), "slices": int(stacks.shape[1]), "volumes": volumes,
              "png_folder": str(folder), "figure": str(figure)}  # fmt: skip
    atomic_write_json(out / "stacks.json", record)
    return record


def orthogonal_views(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axial (the middle slice, H x W), and the two reslices through the centre: along the PNG's
    columns (S x W, anterior to the right) and along its rows (S x H), superior at the top."""
    slices, height, width = stack.shape
    axial = stack[slices // 2]
    along_columns = stack[::-1, height // 2, :]  # (S, W): the plane through the middle row
    along_rows = stack[::-1, :, width // 2]  # (S, H): the plane through the middle column
    return axial, along_columns, along_rows


def views_figure(stacks: np.ndarray, path: Path, titles: list[str]) -> Path:
    """One row per stack (N, S, H, W): axial, and the two through-plane views at true aspect."""
    import matplotlib.pyplot as plt

    from brainvq.figures import save_figure

    count = len(stacks)
    figure, axes = plt.subplots(count, 3, figsize=(9, 2.6 * count), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 1, 1]})  # fmt: skip
    aspect = SLICE_MM / PIXEL_MM
    for row, (stack, title) in enumerate(zip(stacks, titles, strict=True)):
        axial, along_columns, along_rows = orthogonal_views(stack)
        for col, (view, name, ratio) in enumerate(
            ((axial, "axial (middle slice)", 1.0), (along_columns, "middle row, slices 4x taller", aspect),
             (along_rows, "middle column, slices 4x taller", aspect))
        ):  # fmt: skip
            axes[row, col].imshow(view, cmap="gray", vmin=0, vmax=255, aspect=ratio * 4 if col else 1.0)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(name, fontsize=8)
        axes[row, 0].set_ylabel(title, fontsize=8)
    return save_figure(figure, path)
