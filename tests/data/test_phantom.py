from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainvq.data.checks import check_data
from brainvq.data.phantom import CSF, GREY, WHITE, PhantomSubject, make_phantom, render_slice, split_subjects


def test_same_seed_same_files(tmp_path: Path) -> None:
    make_phantom(tmp_path / "a", 4, seed=7, size=64, num_slices=4)
    make_phantom(tmp_path / "b", 4, seed=7, size=64, num_slices=4)
    make_phantom(tmp_path / "c", 4, seed=8, size=64, num_slices=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 2 * 4 * 4
    same = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files]
    other = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "c" / f).read_bytes() for f in files]
    assert all(same) and not all(other)


def test_layout_is_valid_oasis(phantom_root: Path) -> None:
    report = check_data(phantom_root)
    assert report["problems"] == []
    assert {s: report["splits"][s]["subjects"] for s in report["splits"]} == {"train": 4, "validate": 1, "test": 1}
    assert report["splits"]["train"]["images"] == 4 * 32
    assert report["splits"]["train"]["masks"] == 4 * 32


def test_tissue_intensities_follow_t1(phantom_root: Path) -> None:
    means = {CSF: [], GREY: [], WHITE: []}
    for path in sorted((phantom_root / "keras_png_slices_train").glob("case_001_slice_1[0-9].nii.png")):
        image = np.asarray(Image.open(path), dtype=float)
        mask = (
            np.asarray(
                Image.open(
                    str(path)
                    .replace("keras_png_slices_train", "keras_png_slices_seg_train")
                    .replace("case_", "seg_")
                )
            )
            // 85
        )
        for label in means:
            if (mask == label).sum() > 20:
                means[label].append(image[mask == label].mean())
    csf, grey, white = (np.mean(means[k]) for k in (CSF, GREY, WHITE))
    assert csf < grey < white
    assert white - csf > 80


def test_subjects_and_slices_vary() -> None:
    subjects = [PhantomSubject.draw(np.random.default_rng([0, i])) for i in range(1, 5)]
    areas = [
        [(render_slice(s, k, 32, 64, np.random.default_rng(0))[0] > 0).sum() for k in (2, 16, 30)]
        for s in subjects
    ]
    for per_slice in areas:
        assert per_slice[1] > per_slice[0] and per_slice[1] > per_slice[2]  # mid-volume slices are largest
    assert len({a[1] for a in areas}) == len(areas)  # every subject differs
    assert len({s.ventricle_scale for s in subjects}) == len(subjects)


def test_split_subjects_like_oasis() -> None:
    splits = split_subjects(113)
    assert len(splits["test"]) == 17
    assert not set(splits["train"]) & set(splits["validate"])
    assert max(splits["train"]) < min(splits["validate"]) < min(splits["test"])


def test_the_phantom_command_never_writes_into_a_folder_it_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from brainvq.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    argv = ["phantom", str(mine), "--subjects", "3", "--size", "32", "--slices", "2"]
    assert main(argv) == 2 and "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 2 and "refusing to delete" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    fresh = tmp_path / "fresh"
    assert main(["phantom", str(fresh), "--subjects", "3", "--size", "32", "--slices", "2"]) == 0
    assert main(["phantom", str(fresh), "--subjects", "3", "--size", "32", "--slices", "2", "--force"]) == 0
