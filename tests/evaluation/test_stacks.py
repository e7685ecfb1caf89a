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
    stack_variety,
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
    # shuffling moves slices between subjects: slice k of two stacks is as alike as before (the same pool
    # of slice-k images), but one stack's slices k and k + 8 now come from two subjects
    assert result["shuffled"]["within_stack"] < result["real"]["within_stack"]
    assert abs(result["shuffled"]["between_stacks"] - result["real"]["between_stacks"]) < 0.1


def test_adjacent_agreement_and_subject_memorisation_known_answers() -> None:
    rng = np.random.default_rng(0)
    smooth = np.repeat(rng.uniform(0.2, 1, size=(2, 1, 32, 32)), 8, axis=1).astype(np.float32)
    assert np.allclose(adjacent_ssim(smooth), 1.0, atol=1e-4)  # identical neighbours
    noisy = rng.uniform(0.2, 1, size=(2, 8, 32, 32)).astype(np.float32)
    assert adjacent_ssim(noisy).max() < 0.2
    train = rng.uniform(0, 1, size=(3, 4, 16, 16))
    assert nearest_subject_correlation(train[1:2], train) == pytest.approx([1.0])  # a copy of subject 2
    assert nearest_subject_correlation(rng.uniform(0, 1, size=(1, 4, 16, 16)), train)[0] < 0.3


def test_stack_variety_known_answers() -> None:
    """Copies of one stack are alike between stacks (1); a stack of one repeated slice is alike within
    (1); unrelated noise is alike nowhere; too small a set gives NaN, not an error."""
    rng = np.random.default_rng(0)
    one = rng.uniform(0.2, 1, size=(1, 8, 32, 32)).astype(np.float32)
    copies = stack_variety(np.repeat(one, 3, axis=0), pairs=60)
    assert copies.between_stacks == pytest.approx(1.0, abs=1e-4) and copies.within_stack < 0.2
    still = stack_variety(
        np.repeat(rng.uniform(0.2, 1, size=(3, 1, 32, 32)), 8, axis=1).astype(np.float32), pairs=60
    )
    assert still.within_stack == pytest.approx(1.0, abs=1e-4) and still.between_stacks < 0.2
    noise = stack_variety(rng.uniform(0.2, 1, size=(3, 8, 32, 32)).astype(np.float32), pairs=60)
    assert max(noise) < 0.2
    # every slice of its own image, once: any-pair diversity lies between its two parts' extremes
    assert still.between_stacks <= still.slice_diversity <= still.within_stack
    single = stack_variety(one, pairs=10)
    assert np.isnan(single.between_stacks) and not np.isnan(single.within_stack)
    assert np.isnan(stack_variety(one[:, :1], pairs=10)).all()
    big = rng.uniform(0.2, 1, size=(2, 4, 176, 176)).astype(np.float32)  # MS-SSIM from 176 pixels
    assert stack_variety(np.repeat(big[:1], 2, axis=0), pairs=10).between_stacks == pytest.approx(1.0, abs=1e-3)
