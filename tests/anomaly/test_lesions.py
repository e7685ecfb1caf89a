"""Synthetic lesions: inside the brain, deterministic, and their masks are the changed pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainvq.anomaly.lesions import lesion_dir
from brainvq.cli import main
from brainvq.data.checks import check_data
from brainvq.data.layout import image_dir, mask_dir


def _load(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.iterdir())}


def test_lesions_are_in_the_brain_deterministic_and_masked_exactly(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a", "b"):
        assert main(["lesions", "--data", str(phantom_root), "--split", "validate", "--out", str(tmp_path / name),
                     "--seed", "4"]) == 0  # fmt: skip
    assert main(["lesions", "--data", str(phantom_root), "--split", "validate", "--out", str(tmp_path / "c"),
                 "--seed", "5"]) == 0  # fmt: skip
    a, b, c = (_load(image_dir(tmp_path / n, "validate")) for n in "abc")
    assert all(np.array_equal(a[k], b[k]) for k in a) and any(not np.array_equal(a[k], c[k]) for k in a)
    original = _load(image_dir(phantom_root, "validate"))
    tissue = _load(mask_dir(phantom_root, "validate"))
    truth = _load(lesion_dir(tmp_path / "a", "validate"))
    lesioned = 0
    for name, image in a.items():
        mask = truth[name.replace("case_", "lesion_")] > 0
        changed = image != original[name]
        assert np.array_equal(mask, changed)  # the truth is exactly the changed pixels
        brain = tissue[name.replace("case_", "seg_")] > 0
        assert not (mask & ~brain).any()  # never in the background
        lesioned += int(mask.any())
    record = json.loads((tmp_path / "a" / "lesions.json").read_text())
    assert lesioned == record["lesioned"] > 5
    blobs = [blob for blobs in record["blobs"].values() for blob in blobs]
    radii = [blob["radius"] for blob in blobs if blob["kind"] != "ms-hypo"]
    assert min(radii) >= 3 and max(radii) <= 20
    assert {blob["kind"] for blob in blobs} == {"hyper", "hypo", "ms-hypo"}
    assert check_data(tmp_path / "a")["problems"] == []
    assert main(["lesions", "--data", str(phantom_root), "--split", "validate", "--out", str(tmp_path / "a")]) == 2
    assert "--force" in capsys.readouterr().err


def test_force_replaces_the_old_copy_only_once_the_new_one_is_built(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lesions --force` that fails while writing (a 16-bit slice, found only then) leaves the old copy
    whole (issue 35, item 10: the old copy used to be deleted first)."""
    import shutil

    from brainvq.cli import main

    out = tmp_path / "lesions"
    assert main(["lesions", "--data", str(phantom_root), "--split", "validate", "--out", str(out)]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    last = sorted(image_dir(data, "validate").glob("*.png"))[-1]
    Image.fromarray(np.asarray(Image.open(last)).astype(np.uint16) * 257).save(last)
    assert main(["lesions", "--data", str(data), "--split", "validate", "--out", str(out), "--force"]) == 2
    assert "8-bit slices only" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_ms_like_lesions_are_small_dark_ovoids_in_periventricular_white_matter(
    phantom_root: Path, tmp_path: Path
) -> None:
    """`--types ms`: clusters of 3-8 mm hypointense ovoids, only in white matter, near the ventricles."""
    from scipy.ndimage import distance_transform_edt

    out = tmp_path / "ms"
    assert main(["lesions", "--data", str(phantom_root), "--split", "validate", "--out", str(out), "--types", "ms",
                 "--fraction", "1"]) == 0  # fmt: skip
    record = json.loads((out / "lesions.json").read_text())
    blobs = [blob for blobs in record["blobs"].values() for blob in blobs]
    assert record["lesioned"] > 5 and {b["kind"] for b in blobs} == {"ms-hypo"}
    assert all(1.5 <= b["radius"] <= 4 for b in blobs) and all(2 <= len(v) <= 6 for v in record["blobs"].values())
    original, tissue = _load(image_dir(phantom_root, "validate")), _load(mask_dir(phantom_root, "validate"))
    images, truths = _load(image_dir(out, "validate")), _load(lesion_dir(out, "validate"))
    for name, image in images.items():
        mask = truths[name.replace("case_", "lesion_")] > 0
        if not mask.any():
            continue
        labels = tissue[name.replace("case_", "seg_")] // 85  # grey levels 0/85/170/255 -> labels 0..3
        assert (labels[mask] == 3).all()  # white matter only
        assert (image[mask].astype(int) <= original[name][mask].astype(int)).all()  # darker, never brighter
        ventricles = (labels == 1) & (distance_transform_edt(labels > 0) > 10)
        assert distance_transform_edt(~ventricles)[mask].max() <= 8 + 4 + 2  # seed within 8 px, radius <= 4
    assert main(["lesions", "--data", str(phantom_root), "--split", "validate", "--out", str(tmp_path / "x"),
                 "--types", "cysts"]) == 2  # fmt: skip
