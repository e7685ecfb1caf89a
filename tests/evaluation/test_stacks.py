"""Stack metrics by known answers on the phantom: real stacks against real stacks is the floor; real
slices shuffled across subjects (no brain) must score clearly worse on every stack metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainvq.evaluation.stacks import (
    adjacent_ssim,
    nearest_subject_correlation,
    read_stacks,
    score_stacks,
    shuffled_stacks,
)


def test_shuffled_real_slices_score_worse_than_real_subjects(judge_data: Path, trained_judge: Path) -> None:
    from brainvq.evaluation.judge import load_judge

    stacks, subjects = read_stacks(judge_data, "train")
    assert stacks.shape == (10, 32, 64, 64) and subjects == sorted(subjects)
    reference, floor = stacks[:5], stacks[5:]
    judge = load_judge(trained_judge, "cpu")
    result = score_stacks({"real": floor, "shuffled": shuffled_stacks(floor, seed=1)}, reference, judge,
                          train=reference)  # fmt: skip
    for key in ("adjacent_ssim_w", "through_plane_w", "tissue_curve_w"):
        assert result["shuffled"][key] > 2 * result["real"][key], (key, result)
    assert result["shuffled"]["adjacent_ssim_mean"] < result["real"]["adjacent_ssim_mean"]


def test_adjacent_agreement_and_subject_memorisation_known_answers() -> None:
    rng = np.random.default_rng(0)
    smooth = np.repeat(rng.uniform(0.2, 1, size=(2, 1, 32, 32)), 8, axis=1).astype(np.float32)
    assert np.allclose(adjacent_ssim(smooth), 1.0, atol=1e-4)  # identical neighbours
    noisy = rng.uniform(0.2, 1, size=(2, 8, 32, 32)).astype(np.float32)
    assert adjacent_ssim(noisy).max() < 0.2
    train = rng.uniform(0, 1, size=(3, 4, 16, 16))
    assert nearest_subject_correlation(train[1:2], train) == pytest.approx([1.0])  # a copy of subject 2
    assert nearest_subject_correlation(rng.uniform(0, 1, size=(1, 4, 16, 16)), train)[0] < 0.3
