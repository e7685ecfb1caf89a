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
    radii = [blob["radius"] for blobs in record["blobs"].values() for blob in blobs]
    assert min(radii) >= 3 and max(radii) <= 20
    kinds = {blob["kind"] for blobs in record["blobs"].values() for blob in blobs}
    assert kinds == {"hyper", "hypo"}
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
