"""Sample-realism metrics on cases where the answer is known."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from brainvq.cli import main
from brainvq.phantom import make_phantom
from brainvq.realism import (
    ImageSet,
    diversity,
    frechet_and_kid,
    matching_slices,
    per_slice_fractions,
    precision_recall,
    tissue_error,
)


def _features(seed: int, n: int = 200, shift: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=generator) + shift


def test_identical_sets_score_perfectly() -> None:
    real = _features(0)
    fd, kid, kid_std = frechet_and_kid(real, real.clone())
    # KID's subsets of two identical sets share points, which its cross term counts: at most zero
    assert abs(fd) < 1e-6 and kid < 3 * kid_std
    assert precision_recall(real, real.clone()) == (1.0, 1.0)


def test_a_shifted_set_ranks_worse_than_a_fresh_draw() -> None:
    real, fresh, shifted = _features(0), _features(1), _features(2, shift=1.5)
    fd_fresh, kid_fresh, _ = frechet_and_kid(real, fresh)
    fd_shifted, kid_shifted, _ = frechet_and_kid(real, shifted)
    assert fd_shifted > 5 * fd_fresh and kid_shifted > kid_fresh
    assert precision_recall(real, shifted)[0] < precision_recall(real, fresh)[0]
    collapsed = real[:1].repeat(200, 1) + 0.01 * _features(3)  # one mode: high precision, no recall
    _, recall = precision_recall(real, collapsed)
    assert recall < 0.2


def test_matching_slices_follow_the_real_split() -> None:
    every_slice = torch.arange(32).repeat(35)  # 35 subjects with all 32 slices, as OASIS validate
    counts = torch.bincount(torch.tensor(matching_slices(every_slice, 256)), minlength=32)
    assert int(counts.min()) >= 7 and int(counts.max()) <= 9  # every slice, about 256/32 = 8 times
    middle_only = torch.arange(10, 20).repeat(5)
    drawn = matching_slices(middle_only, 40)
    assert min(drawn) == 10 and max(drawn) == 19 and drawn == sorted(drawn)


def test_tissue_error_and_diversity_known_answers() -> None:
    fractions = torch.rand(64, 3)
    slices = torch.arange(64) % 32
    table = per_slice_fractions(fractions, slices, 32)
    assert tissue_error(table, table) == 0.0
    assert tissue_error(table, table + 0.1) == pytest.approx(0.1)
    same = ImageSet("same", torch.full((10, 1, 32, 32), 128, dtype=torch.uint8))
    value, measure = diversity(same)
    assert measure == "ssim" and value == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_train_copies_are_memorised_fresh_subjects_are_not_and_blur_scores_worse(
    trained_judge: Path,
    judge_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from PIL import Image, ImageFilter

    copies = tmp_path / "copies"
    shutil.copytree(judge_data / "keras_png_slices_train", copies)
    fresh_root = tmp_path / "fresh"
    make_phantom(fresh_root, 14, seed=99, size=64)  # new subjects from the same generator
    blurred = tmp_path / "blurred"
    blurred.mkdir()
    for path in (fresh_root / "keras_png_slices_train").iterdir():
        Image.open(path).filter(ImageFilter.GaussianBlur(2)).save(blurred / path.name)
    for cached in (trained_judge / "cache").glob("real_*.pt"):
        cached.unlink()  # the first call below judges the real split, the next two read it back
    results = {}
    for name, folder in (
        ("copies", copies),
        ("fresh", fresh_root / "keras_png_slices_train"),
        ("blurred", blurred),
    ):
        argv = ["evaluate-samples", "--judge", str(trained_judge), "--real", str(judge_data), "--split", "validate",
                "--samples", str(folder), "--json"]  # fmt: skip
        assert main(argv) == 0
        results[name] = json.loads(capsys.readouterr().out)
    copies_scores, fresh, blur = results["copies"], results["fresh"], results["blurred"]
    assert copies_scores["memorised_fraction"] > 0.95
    assert fresh["memorised_fraction"] < 0.1
    assert fresh["reference"]["real"]["memorised_fraction"] < 0.1
    assert blur["fd_judge"] > 2 * fresh["fd_judge"] and blur["precision"] < fresh["precision"]
    keys = {"n", "fd_judge", "kid_judge", "precision", "recall", "tissue_error", "slice_error", "ms_ssim_diversity",
            "memorised_fraction"}  # fmt: skip
    assert keys <= set(fresh) and keys <= set(fresh["reference"]["real"])
    assert fresh["judge_hash"] == copies_scores["judge_hash"] and "not comparable to FID" in fresh["note"]
    assert fresh["slice_error"] is not None  # OASIS-style names give the slice index
    assert len(list((trained_judge / "cache").glob("real_*.pt"))) == 1
    assert fresh["reference"]["real"] == copies_scores["reference"]["real"] == blur["reference"]["real"]
    assert fresh["memorisation_threshold_ssim"] == copies_scores["memorisation_threshold_ssim"]
