"""``anomaly --volumes``: scans in, maps out in each scan's own grid, scored against truth volumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from brainvq.anomaly.volumes import scores
from brainvq.cli import main
from brainvq.conform.geometry import stack_volume

pytestmark = pytest.mark.slow


def _scan_and_truth(root: Path, folder: Path) -> tuple[Path, Path, np.ndarray]:
    """A validate subject's slices with a dark blob, moved and stored as a scan; the blob's voxels as truth."""
    images = root / "keras_png_slices_validate"
    subject = sorted({int(p.name.split("_")[1]) for p in images.glob("case_*")})[0]
    stack = np.stack([np.asarray(Image.open(images / f"case_{subject:03d}_slice_{k}.nii.png"), np.float32) / 255
                      for k in range(32)])  # fmt: skip
    lesion = np.zeros_like(stack, bool)
    lesion[12:20, 26:34, 30:38] = True  # slices 12-19, rows 26-33, columns 30-37: inside the phantom brain
    stack[lesion] = 0.05
    move = np.eye(4)
    move[:3, :3] = np.reshape(sitk.Euler3DTransform((0, 0, 0), 0.1, -0.05, 0.08).GetMatrix(), (3, 3))
    move[:3, 3] = (3, -2, 4)
    volume, affine = stack_volume(stack, pad=6, move=move)
    truth, _ = stack_volume(lesion.astype(np.float32), pad=6, move=move)
    for path, data in ((folder / "scans" / f"sub-{subject:03d}.nii.gz", (volume * 1000).astype(np.int16)),
                       (folder / "truth" / f"sub-{subject:03d}_lesion.nii.gz", (truth > 0.5).astype(np.uint8))):  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), str(path))
    return folder / "scans", folder / "truth", truth > 0.5


def test_maps_are_written_in_the_scans_grid_and_the_json_agrees_with_them(
    finished_run: Path, phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    scans, truths, truth = _scan_and_truth(phantom_root, tmp_path)
    out = tmp_path / "out"
    argv = ["anomaly", "--run", str(run), "--volumes", str(scans), "--truth-volumes", str(truths), "--out", str(out),
            "--json", "--batch-size", "32", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    record = result["volumes"][0]
    assert record["ok"], record
    scan = nib.load(str(next(scans.iterdir())))
    files = result["files"]  # method -> file suffix; the chosen method's is "anomaly"
    assert files == {"nll_z": "anomaly", "residual": "residual", "intensity": "intensity"}
    written = {}
    for method in (*files.values(), "coverage", "brain"):
        image = nib.load(str(out / f"{Path(record['volume']).name.split('.')[0]}_{method}.nii.gz"))
        assert image.shape == scan.shape and np.allclose(image.affine, scan.affine)
        written[method] = np.asanyarray(image.dataobj)
    covered = written["coverage"] > 0
    assert covered[truth].all() and not covered.all()  # the slab covers the lesion, not the padding
    assert written["anomaly"][~covered].max() == 0
    # the scores in the JSON are those of the written files (inside the brain and the covered slab)
    stem = Path(record["volume"]).name.split(".")[0]
    brain_and_slab = (np.asanyarray(nib.load(str(out / f"{stem}_brain.nii.gz")).dataobj) > 0) & covered
    again = scores({m: written[files[m]] for m in files}, truth, brain_and_slab, result["operating_thresholds"])
    for method in files:
        for key in ("pixel_ap", "pixel_auroc", "best_dice", "dice_at_operating_threshold"):
            assert again[method][key] == pytest.approx(record["scores"][method][key], rel=1e-4), (method, key)
    assert again["lesion_voxel_fraction"] == pytest.approx(record["scores"]["lesion_voxel_fraction"])
    assert (out / f"{Path(record['volume']).name.split('.')[0]}.png").is_file()


def test_bad_volumes_are_one_line(finished_run: Path, phantom_root: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    scans, truths, _ = _scan_and_truth(phantom_root, tmp_path)
    wrong = next(truths.iterdir())
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(wrong))
    argv = ["anomaly", "--run", str(run), "--volumes", str(scans), "--out", str(tmp_path / "out")]
    assert main([*argv, "--truth-volumes", str(truths)]) == 2
    err = capsys.readouterr().err
    assert "truth volume of shape (5, 5, 5)" in err and "Traceback" not in err
    noise = next(scans.iterdir())
    image = nib.load(str(noise))
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).uniform(0, 1000, image.shape).astype(np.int16), image.affine),
        str(noise),
    )
    assert main([*argv, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)["volumes"][0]
    # noise either lands nowhere near the template's brain or pulls the slab outside the scan: both
    # refusals are right, and which one a threaded registration of noise meets first can vary
    assert not record["ok"] and (
        "did not register" in record["problem"] or "not fully inside" in record["problem"]
    )
