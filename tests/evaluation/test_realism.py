"""Sample-realism metrics on cases where the answer is known."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from brainvq.cli import main
from brainvq.data.phantom import make_phantom
from brainvq.evaluation.reference import Reference, draw_like, real_same_n
from brainvq.evaluation.scores import (
    ImageSet,
    Judged,
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


def test_kid_is_repeatable_and_leaves_the_global_generator_alone() -> None:
    real, fresh = _features(0), _features(1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = frechet_and_kid(real, fresh)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random numbers are untouched
    torch.manual_seed(7)
    assert frechet_and_kid(real, fresh) == first  # KID's subsets are seeded inside


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
    result = diversity(same)
    assert result.measure == "ssim" and result.mean == pytest.approx(1.0, abs=1e-4)
    assert result.standard_error == pytest.approx(0.0, abs=1e-6)  # every pair scores the same
    mixed = ImageSet("mixed", torch.randint(0, 256, (10, 1, 32, 32), dtype=torch.uint8))
    mixed.pixels[:5] = 128  # pairs of two flat images score 1, the rest far less: a spread of scores
    spread = diversity(mixed, pairs=120)
    assert 0.0 < spread.mean < 1.0 and 0.0 < spread.standard_error < 0.1


def test_draw_like_takes_the_wanted_slices_and_repeats_none_before_the_pool_is_used_up() -> None:
    pool = torch.arange(10).repeat(4)  # 4 images of each slice index 0..9
    wanted = torch.tensor([2, 2, 2, 7, -1] + [5] * 6)
    pick = draw_like(pool, wanted, torch.Generator().manual_seed(0))
    assert sorted(pool[pick].tolist()) == [2, 2, 2, 5, 5, 5, 5, 5, 5, 7]  # the -1 (unknown) is skipped
    fives = pick[pool[pick] == 5].tolist()
    assert len(set(fives[:4])) == 4  # all four 5s once before any twice
    assert len(draw_like(pool, torch.tensor([11, 12]), torch.Generator())) == 0  # the pool lacks them


def _reference_and_half(subjects: int, seed: int) -> tuple[Reference, ImageSet, Judged]:
    """Two halves of ``subjects`` fake subjects with 8 slices whose tissue fractions vary by subject."""
    generator = torch.Generator().manual_seed(seed)

    def half() -> tuple[ImageSet, Judged]:
        slices = torch.arange(8).repeat(subjects)
        fractions = (0.3 + 0.1 * torch.randn(len(slices), 3, generator=generator)).clamp(0, 1)
        features = torch.randn(len(slices), 6, generator=generator)
        pixels = torch.zeros(len(slices), 1, 4, 4, dtype=torch.uint8)
        return ImageSet("half", pixels, slices), Judged(features, fractions, slices.clone())

    set_b, judged_b = half()
    set_a, judged_a = half()
    table_b = per_slice_fractions(judged_b.fractions, judged_b.slice_pred, 8)
    reference = Reference(set_b, judged_b, table_b, None, torch.zeros(0), 0.9, 8)  # type: ignore[arg-type]
    return reference, set_a, judged_a


def test_the_floor_at_the_samples_size_is_higher_than_the_whole_half_and_falls_as_n_grows() -> None:
    reference, half_a, judged = _reference_and_half(subjects=40, seed=0)
    nearest = torch.zeros(len(half_a))
    whole = tissue_error(reference.real_table, per_slice_fractions(judged.fractions, half_a.slices, 8))  # type: ignore[arg-type]
    floors = {
        n: real_same_n(reference, half_a, judged, nearest, torch.arange(8).repeat(n // 8)) for n in (16, 64, 320)
    }
    assert floors[16]["n"] == 16 and floors[16]["draws"] == 20 and floors[16]["tissue_error_std"] > 0
    assert floors[16]["tissue_error"] > floors[64]["tissue_error"] > floors[320]["tissue_error"]
    assert floors[320]["tissue_error"] == pytest.approx(whole)  # every image of half A, in any order
    assert floors[16]["slice_error"] == 0.0 and floors[16]["memorised_fraction"] == 0.0
    assert floors[16]["ms_ssim_diversity"] is None
    again = real_same_n(reference, half_a, judged, nearest, torch.arange(8).repeat(2))
    assert again == floors[16]  # seeded: the same draws every time


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
    assert 0.0 < fresh["ms_ssim_diversity_se"] < 0.05 and fresh["reference"]["real"]["ms_ssim_diversity_se"] > 0.0
    same_n = fresh["reference"]["real_same_n"]  # the floor drawn at the samples' size and slice mix
    assert keys <= set(same_n) and same_n["n"] == fresh["n"] and same_n["draws"] == 20
    assert fresh["judge_hash"] == copies_scores["judge_hash"] and "not comparable to FID" in fresh["note"]
    assert fresh["slice_error"] is not None  # OASIS-style names give the slice index
    assert len(list((trained_judge / "cache").glob("real_*.pt"))) == 1
    assert fresh["reference"]["real"] == copies_scores["reference"]["real"] == blur["reference"]["real"]
    assert fresh["memorisation_threshold_ssim"] == copies_scores["memorisation_threshold_ssim"]


@pytest.mark.slow
def test_too_few_samples_and_re_sliced_training_data(
    trained_judge: Path, judge_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three samples get one clear line (precision/recall need 4); training data re-written under the
    same names is judged again rather than served from the cache (issue 35, item 10), and the same
    files copied elsewhere with new modification times are served from it."""
    import os

    from PIL import Image

    few = tmp_path / "few"
    few.mkdir()
    for path in sorted((judge_data / "keras_png_slices_validate").iterdir())[:3]:
        shutil.copy(path, few / path.name)
    argv = ["evaluate-samples", "--judge", str(trained_judge), "--real", str(judge_data), "--split", "validate",
            "--samples", str(few)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "need at least 4 images to score" in err and "Traceback" not in err
    train = tmp_path / "data"
    shutil.copytree(judge_data, train)
    samples = judge_data / "keras_png_slices_test"
    scored = [*argv[:-2], "--samples", str(samples), "--train", str(train), "--json"]
    assert main(scored) == 0
    before = len(list((trained_judge / "cache").glob("train_features_*.pt")))
    capsys.readouterr()
    first = sorted((train / "keras_png_slices_train").iterdir())[0]
    Image.open(first).rotate(90).save(first)  # re-sliced: same name, other pixels
    assert main(scored) == 0
    assert len(list((trained_judge / "cache").glob("train_features_*.pt"))) == before + 1
    moved = tmp_path / "moved"  # the same files elsewhere, with new modification times: judged once is enough
    shutil.copytree(train, moved)
    for path in (moved / "keras_png_slices_train").iterdir():
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert main([*scored[:-3], "--train", str(moved), "--json"]) == 0
    assert len(list((trained_judge / "cache").glob("train_features_*.pt"))) == before + 1
