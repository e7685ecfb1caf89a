"""slice-volumes: orientation-independent slices, Analyze and 4D input, labels, subject splits, bad input."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from brainvq.cli import main
from brainvq.data.checks import check_data
from brainvq.data.phantom import make_phantom
from brainvq.data.slicing import slice_volumes, split_subjects
from brainvq.data.volumes import SliceOptions
from brainvq.errors import DataError

OPTIONS = SliceOptions(num_slices=16, size=64)


@pytest.fixture(scope="module")
def phantom_volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 phantom subjects written as NIfTI volumes (64x64 in-plane, 32 slices + padding) and label volumes."""
    root = tmp_path_factory.mktemp("phantom_volumes")
    make_phantom(root, num_subjects=6, seed=1, size=64, volumes=True)
    return root


def _one_volume(phantom_volumes: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(phantom_volumes / "volumes" / "sub-001_T1w.nii.gz"))
    return np.asarray(image.dataobj), image.affine


def _slice(folder: Path, out: Path, **kwargs: object) -> list[np.ndarray]:
    slice_volumes(folder, out, kwargs.pop("options", OPTIONS), progress=False, workers=1, **kwargs)  # type: ignore[arg-type]
    files = sorted(out.rglob("case_*.png"))
    return [np.asarray(Image.open(f)) for f in files]


def _save(folder: Path, name: str, data: np.ndarray, affine: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_same_anatomy_gives_the_same_slices_in_any_stored_orientation(
    phantom_volumes: Path, tmp_path: Path
) -> None:
    data, affine = _one_volume(phantom_volumes)
    _save(tmp_path / "ras", "sub-001.nii.gz", data, affine)
    # LAS: the x axis stored flipped; the affine says so.
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = data.shape[0] - 1
    _save(tmp_path / "las", "sub-001.nii.gz", data[::-1].copy(), affine @ flip)
    # Permuted: stored as (Z, X, Y).
    perm = np.zeros((4, 4))
    perm[0, 1] = perm[1, 2] = perm[2, 0] = perm[3, 3] = 1.0
    _save(tmp_path / "perm", "sub-001.nii.gz", np.ascontiguousarray(data.transpose(2, 0, 1)), affine @ perm)
    assert nib.aff2axcodes(nib.load(str(tmp_path / "las" / "sub-001.nii.gz")).affine) == ("L", "A", "S")
    ras = _slice(tmp_path / "ras", tmp_path / "out_ras", fractions=(1.0, 0.0, 0.0))
    for name in ("las", "perm"):
        other = _slice(tmp_path / name, tmp_path / f"out_{name}", fractions=(1.0, 0.0, 0.0))
        assert len(other) == len(ras) == 16
        assert all(np.array_equal(a, b) for a, b in zip(ras, other, strict=True)), name
    rows = list(csv.DictReader((tmp_path / "out_perm" / "manifest.csv").open()))
    assert rows[0]["orientation"] != "RAS" and rows[0]["subject"] == "1"


def test_slices_match_the_phantom_and_labels_map_to_grey_levels(phantom_volumes: Path, tmp_path: Path) -> None:
    out = tmp_path / "sliced"
    summary = slice_volumes(
        phantom_volumes / "volumes",
        out,
        SliceOptions(num_slices=32, size=64),
        labels_dir=phantom_volumes / "labels",
        progress=False,
    )
    assert summary.volumes == 6 and summary.images == 6 * 32
    report = check_data(out)
    assert report["problems"] == []
    assert sum(s["masks"] for s in report["splits"].values()) == 6 * 32
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [int(r["voxel_index"]) for r in rows if r["subject"] == "1"] == list(
        range(4, 36)
    )  # the head, not the padding
    row = next(r for r in rows if r["subject"] == "2" and r["slice"] == "12")
    split = row["split"]
    original = phantom_volumes / "keras_png_slices_seg_train" / "seg_002_slice_12.nii.png"
    sliced = out / f"keras_png_slices_seg_{split}" / "seg_002_slice_12.nii.png"
    assert np.array_equal(np.asarray(Image.open(original)), np.asarray(Image.open(sliced)))
    image = np.asarray(Image.open(out / f"keras_png_slices_{split}" / "case_002_slice_12.nii.png")).astype(float)
    truth = np.asarray(Image.open(phantom_volumes / "keras_png_slices_train" / "case_002_slice_12.nii.png"))
    assert np.corrcoef(image.ravel(), truth.astype(float).ravel())[0, 1] > 0.999


def test_analyze_pair_4d_singleton_and_int16_read_like_nifti(phantom_volumes: Path, tmp_path: Path) -> None:
    data, _ = _one_volume(phantom_volumes)
    assert data.dtype == np.int16
    zooms = (200 / 64, 200 / 64, 4.0)
    analyze = nib.AnalyzeImage(data, None)
    analyze.header.set_zooms(zooms)
    (tmp_path / "analyze").mkdir()
    nib.save(analyze, str(tmp_path / "analyze" / "OAS1_0001_MR1.hdr"))
    assert (tmp_path / "analyze" / "OAS1_0001_MR1.img").is_file()
    stored = nib.load(str(tmp_path / "analyze" / "OAS1_0001_MR1.hdr"))
    _save(tmp_path / "nifti", "sub-001.nii", np.asarray(stored.dataobj), stored.affine)
    _save(tmp_path / "four_d", "sub-001.nii.gz", np.asarray(stored.dataobj)[..., None], stored.affine)
    reference = _slice(tmp_path / "nifti", tmp_path / "out_nifti", fractions=(1.0, 0.0, 0.0))
    for name in ("analyze", "four_d"):
        other = _slice(tmp_path / name, tmp_path / f"out_{name}", fractions=(1.0, 0.0, 0.0))
        assert all(np.array_equal(a, b) for a, b in zip(reference, other, strict=True)), name
    assert (tmp_path / "out_analyze" / "keras_png_slices_train" / "case_001_slice_0.nii.png").is_file()


def test_16_bit_output_and_the_coronal_axis(phantom_volumes: Path, tmp_path: Path) -> None:
    options = SliceOptions(num_slices=8, size=48, bits=16, axis="coronal")
    slices = _slice(phantom_volumes / "volumes", tmp_path / "out", options=options)
    assert slices[0].dtype == np.uint16 and slices[0].shape == (48, 48)
    assert max(int(s.max()) for s in slices) > 60000


def test_split_is_by_subject_and_reproducible() -> None:
    subjects = list(range(1, 41))
    first = split_subjects(subjects, (0.8, 0.1, 0.1), seed=0)
    assert first == split_subjects(subjects, (0.8, 0.1, 0.1), seed=0)
    assert first != split_subjects(subjects, (0.8, 0.1, 0.1), seed=1)
    counts = {name: list(first.values()).count(name) for name in ("train", "validate", "test")}
    assert counts == {"train": 32, "validate": 4, "test": 4}
    with pytest.raises(DataError, match="summing to 1"):
        split_subjects(subjects, (0.5, 0.1, 0.1), seed=0)


def _expect_error(capsys: pytest.CaptureFixture[str], argv: list[str], *patterns: str) -> None:
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "error" in line]) == 1 and "Traceback" not in err, err
    for pattern in patterns:
        assert pattern in err, err


def test_bad_volumes_give_one_line_and_leave_nothing_behind(
    phantom_volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, affine = _one_volume(phantom_volumes)
    out = tmp_path / "out"
    cases: dict[str, tuple[np.ndarray, str]] = {
        "two_d": (data[:, :, 20], "2D image"),
        "frames": (np.stack([data, data], axis=-1), "4D volume with 2 frames"),
        "nan": (np.where(data > 100, np.nan, data.astype(np.float32)), "NaN"),
        "constant": (np.full(data.shape, 7, dtype=np.int16), "same value"),
    }
    for name, (array, message) in cases.items():
        path = _save(tmp_path / name, "sub-001.nii.gz", array, affine)
        _expect_error(capsys, ["slice-volumes", str(path.parent), str(out), "--size", "32"], str(path), message)
        assert not out.exists() and not list(tmp_path.glob(".out.*"))
    truncated = tmp_path / "truncated" / "sub-001.nii.gz"
    truncated.parent.mkdir()
    blob = (phantom_volumes / "volumes" / "sub-001_T1w.nii.gz").read_bytes()
    truncated.write_bytes(gzip.compress(gzip.decompress(blob)[:5000]))
    _expect_error(capsys, ["slice-volumes", str(truncated.parent), str(out)], str(truncated), "unreadable volume")
    _expect_error(
        capsys,
        ["slice-volumes", str(phantom_volumes / "volumes"), str(out), "--slices", "100", "--size", "32"],
        "asked for 100 slices",
    )
    nameless = _save(tmp_path / "nameless", "anatomy.nii.gz", data, affine)
    _expect_error(capsys, ["slice-volumes", str(nameless.parent), str(out)], str(nameless), "subject id")
    labels = _save(tmp_path / "labels", "sub-001_dseg.nii.gz", np.zeros((10, 10, 10), np.uint8), affine)
    good = _save(tmp_path / "good", "sub-001.nii.gz", data, affine)
    _expect_error(
        capsys,
        ["slice-volumes", str(good.parent), str(out), "--labels", str(labels.parent), "--splits", "1,0,0"],
        str(labels),
        "differs from its image",
    )
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_existing_output_needs_force_and_force_spares_foreign_folders(
    phantom_volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["slice-volumes", str(phantom_volumes / "volumes"), str(out), "--size", "32", "--slices", "8", "--json"]
    assert main(argv) == 0
    capsys.readouterr()
    _expect_error(capsys, argv, str(out), "--force")
    assert main([*argv, "--force"]) == 0  # brainvq made it: replaced
    capsys.readouterr()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    argv[2] = str(foreign)
    _expect_error(capsys, [*argv, "--force"], str(foreign), "refusing to delete")
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_volumes_to_a_trained_vqvae_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phantom", str(tmp_path / "phantom"), "--subjects", "8", "--size", "64", "--volumes"]) == 0
    data = tmp_path / "data"
    assert main(["slice-volumes", str(tmp_path / "phantom" / "volumes"), str(data), "--size", "64",
                 "--labels", str(tmp_path / "phantom" / "labels"), "--splits", "0.75,0.125,0.125"]) == 0  # fmt: skip
    assert main(["check-data", str(data)]) == 0
    assert "no problems found" in capsys.readouterr().out
    from tests.conftest import TINY

    argv = ["train-vqvae", "--data", str(data), "--run", str(tmp_path / "run"), "--max-steps", "6", "--quiet"]
    assert main(argv + [arg for item in TINY for arg in ("--set", item)]) == 0
    assert (tmp_path / "run" / "checkpoints" / "vqvae-last.ckpt").is_file()


def test_subjects_from_a_csv_and_a_voxel_range(phantom_volumes: Path, tmp_path: Path) -> None:
    folder = tmp_path / "named"
    folder.mkdir()
    data, affine = _one_volume(phantom_volumes)
    _save(folder, "anatomy_a.nii.gz", data, affine)
    _save(folder, "anatomy_b.nii.gz", data, affine)
    table = tmp_path / "subjects.csv"
    table.write_text("file,subject\nanatomy_a.nii.gz,17\nanatomy_b.nii.gz,23\n")
    options = SliceOptions(num_slices=None, slice_range=(10, 20), size=32)
    summary = slice_volumes(
        folder, tmp_path / "out", options, subjects_csv=table, fractions=(1.0, 0.0, 0.0), progress=False
    )
    assert summary.images == 20
    rows = list(csv.DictReader((tmp_path / "out" / "manifest.csv").open()))
    assert {r["subject"] for r in rows} == {"17", "23"}
    assert [int(r["voxel_index"]) for r in rows if r["subject"] == "17"] == list(range(10, 20))
    with pytest.raises(DataError, match="outside the volume"):
        slice_volumes(folder, tmp_path / "out2", SliceOptions(num_slices=None, slice_range=(10, 999)),
                      subjects_csv=table, fractions=(1.0, 0.0, 0.0), progress=False)  # fmt: skip


def test_labels_for_some_subjects_are_refused_at_planning_and_an_empty_split_is_allowed(
    phantom_volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labels for only some subjects would make a dataset train-vqvae refuses: refused before any
    work, naming them. `--splits 0,0,1` (every subject to test) is a legitimate split (issue 35, item 6)."""
    labels = tmp_path / "labels"
    labels.mkdir()
    for path in sorted((phantom_volumes / "labels").glob("*.nii.gz"))[:4]:
        (labels / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    _expect_error(capsys, ["slice-volumes", str(phantom_volumes / "volumes"), str(out), "--labels", str(labels)],
                  "no label volume for 2 of 6 subjects (5, 6)")  # fmt: skip
    assert not out.exists()
    three = tmp_path / "three"
    three.mkdir()
    for path in sorted((phantom_volumes / "volumes").glob("*.nii.gz"))[:3]:
        (three / path.name).write_bytes(path.read_bytes())
    assert main(["slice-volumes", str(three), str(out), "--splits", "0,0,1", "--size", "32", "--slices", "4"]) == 0
    assert check_data(out)["splits"].keys() == {"test"}
    assert split_subjects([1, 2, 3], (0.0, 0.0, 1.0), seed=0) == {1: "test", 2: "test", 3: "test"}


def test_force_keeps_the_old_output_when_the_new_one_fails(
    phantom_volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--force` replaces the old dataset only once the new one is built (issue 35, item 10)."""
    out = tmp_path / "out"
    assert (
        main(["slice-volumes", str(phantom_volumes / "volumes"), str(out), "--size", "32", "--slices", "4"]) == 0
    )
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    data, affine = _one_volume(phantom_volumes)
    bad = _save(tmp_path / "bad", "sub-001.nii.gz", np.full(data.shape, 7, dtype=np.int16), affine)
    _expect_error(capsys, ["slice-volumes", str(bad.parent), str(out), "--force"], "same value")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
