"""The anomaly methods' building blocks, by known answers: combination rules, healthy z-scores, the
post-processing and the segmentation at a threshold, and the operating threshold chosen on healthy slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brainvq.anomaly.methods import METHODS, combine, eroded, finish, segment
from brainvq.anomaly.reference import Statistics
from brainvq.codes import reverse_order


def test_each_combination_rule() -> None:
    forward = torch.tensor([[0.0, 2.0], [4.0, 1.0]])
    backward = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    assert torch.equal(combine([forward, backward], "mean"), torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    assert torch.equal(combine([forward, backward], "max"), torch.tensor([[2.0, 2.0], [4.0, 3.0]]))
    with pytest.raises(ValueError, match="combination rule"):
        combine([forward], "median")


def test_reversing_the_order_turns_the_map_and_is_its_own_inverse() -> None:
    maps = torch.arange(12).view(1, 3, 4)
    turned = reverse_order(maps)
    assert turned[0, 0, 0] == 11 and turned[0, 2, 3] == 0  # the last code is read first
    assert torch.equal(reverse_order(turned), maps)


def test_healthy_z_scores_per_slice_index_and_pooled_where_unknown() -> None:
    values = torch.tensor([[1.0], [3.0], [10.0], [14.0]])  # (N, 1): slices 0, 0, 1, 1
    slices = torch.tensor([0, 0, 1, 1])
    stats = Statistics.of(values, slices, 2)
    assert stats.mean[:, 0].tolist() == [2.0, 12.0]
    assert stats.std[:, 0].tolist() == pytest.approx([2**0.5, 8**0.5])
    z = stats.z(torch.tensor([[2.0 + 2**0.5], [12.0]]), torch.tensor([0, 1]), floor=0.1)
    assert z[:, 0].tolist() == pytest.approx([1.0, 0.0])
    pooled = stats.z(torch.tensor([[7.0]]), torch.tensor([-1]), floor=0.1)  # unknown slice: all slices' mean 7
    assert pooled.item() == pytest.approx(0.0)
    tiny = stats.z(torch.tensor([[3.0]]), torch.tensor([0]), floor=100.0)  # the floor bounds the division
    assert tiny.item() == pytest.approx(0.01)


def test_post_processing_drops_single_pixels_and_everything_outside_the_eroded_brain() -> None:
    brain = torch.zeros(1, 32, 32, dtype=torch.bool)
    brain[:, 4:28, 4:28] = True
    maps = torch.zeros(1, 32, 32)
    maps[0, 10:18, 10:18] = 1.0  # a block survives
    maps[0, 15, 15] = 9.0  # a lone spike: the median removes it
    maps[0, 0:32, 2] = 5.0  # outside the brain
    maps[0, 4:28, 5] = 5.0  # inside the brain, within 3 pixels of its edge
    done = finish(maps, brain)
    assert done[0, 15, 15] == 1.0 and done[0, 12, 12] == 1.0
    assert done[0, :, 2].max() == 0 and done[0, :, 5].max() == 0
    assert eroded(brain)[0, 7, 7] and not eroded(brain)[0, 6, 7]


def test_segmentation_removes_components_smaller_than_the_minimum() -> None:
    maps = np.zeros((1, 20, 20), np.float32)
    maps[0, 1:3, 1:3] = 1.0  # 4 pixels
    maps[0, 10:14, 10:14] = 1.0  # 16 pixels
    masks = segment(maps, 0.5, min_size=8)
    assert not masks[0, 1:3, 1:3].any() and masks[0, 10:14, 10:14].all() and masks.sum() == 16


def test_the_operating_threshold_flags_one_percent_of_healthy_brain(finished_run: Path, tmp_path: Path) -> None:
    """Chosen on healthy validate slices: recomputed independently from those slices' maps."""
    import shutil

    import brainvq
    from brainvq.anomaly.methods import available, method_maps
    from brainvq.anomaly.operating import HEALTHY_QUANTILE, brain_of, healthy_slices, operating_thresholds
    from brainvq.anomaly.reference import healthy_reference
    from brainvq.data.dataset import iterate_batches

    run_root = tmp_path / "run"
    shutil.copytree(finished_run, run_root)
    run = brainvq.load_run(run_root, "cpu")
    methods = [m for m in ("residual", "intensity", "nll_z") if m in available(run)]
    reference = healthy_reference(run)
    thresholds = operating_thresholds(run, reference, methods, None)
    assert set(METHODS) >= set(thresholds)
    values: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    for batch in iterate_batches(healthy_slices(run, None), 16):
        brain = brain_of(batch)
        for method, heat in method_maps(run, reference, batch["image"], batch["slice"], brain, methods).items():
            values[method].append(heat[brain])
    for method in methods:
        everything = torch.cat(values[method])
        assert thresholds[method] == pytest.approx(float(torch.quantile(everything, HEALTHY_QUANTILE)), rel=1e-5)
        assert 0.002 < float((everything > thresholds[method]).float().mean()) <= 0.0101
