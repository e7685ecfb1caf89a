"""Likelihood maps, completion, healing and the anomaly metrics (issue 12)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brainvq.anomaly.likelihood import code_nll_bits, complete, encode
from brainvq.anomaly.maps import heal, image_score
from brainvq.anomaly.scoring import PixelScores, best_dice
from brainvq.config import apply_overrides, load_config
from brainvq.models import VQVAE, build_prior
from brainvq.runs import LoadedRun, RunDir
from brainvq.sampling import resample_codes
from tests.conftest import TINY


def _run(tmp_path: Path, conditioned: bool = True) -> LoadedRun:
    torch.manual_seed(0)
    config = load_config(None, [*TINY, "prior.num_layers=2"])
    config = apply_overrides(config, [f"prior.condition_on_slice={str(conditioned).lower()}", "prior.positional=true",
                                      "prior.code_height=16", "prior.code_width=16"])  # fmt: skip
    vqvae = VQVAE(config.model).eval()
    prior = build_prior(config.prior, config.model.num_embeddings).eval()
    return LoadedRun(RunDir(tmp_path), config, vqvae, prior, (64, 64), "v", "p")


def _images(n: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.nn.functional.avg_pool2d(torch.rand(n, 1, 64, 64, generator=generator), 5, 1, 2)


def test_nll_maps_are_minus_log2_softmax_of_the_full_pass(tmp_path: Path) -> None:
    run = _run(tmp_path)
    codes = encode(run, _images()).codes
    slices = torch.tensor([3, 10, 20])
    nll = code_nll_bits(run, codes, slices)
    logits = run.prior(codes, slices)  # (B, K, h, w)
    for b in range(3):
        for i in range(16):
            for j in range(16):
                expected = -torch.log2(torch.softmax(logits[b, :, i, j].double(), 0)[codes[b, i, j]])
                assert nll[b, i, j].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)


def test_completion_keeps_the_given_rows_and_is_seeded(tmp_path: Path) -> None:
    run = _run(tmp_path)
    image = _images(1)
    codes = encode(run, image).codes
    start = codes.repeat(4, 1, 1)
    redraw = torch.zeros_like(start, dtype=torch.bool)
    redraw[:, 5:] = True
    condition = torch.full((4,), 7)
    first = resample_codes(run.prior, start, redraw, generator=3, condition=condition)
    assert torch.equal(first[:, :5], start[:, :5])  # kept rows exactly
    assert not torch.equal(first[:, 5:], start[:, 5:])
    assert torch.equal(first, resample_codes(run.prior, start, redraw, generator=3, condition=condition))
    assert not torch.equal(first, resample_codes(run.prior, start, redraw, generator=4, condition=condition))
    naive = resample_codes(run.prior, start, redraw, generator=3, condition=condition, sampler="naive")
    assert torch.equal(first, naive)  # the fast sampler started from a prefix is exact
    images = complete(run, image, 5, 2, seed=0, slice_index=7)
    assert images.shape == (2, 1, 64, 64)


def test_healing_redraws_only_the_unlikely_codes(tmp_path: Path) -> None:
    run = _run(tmp_path)
    images, slices = _images(), torch.tensor([3, 10, 20])
    nll = code_nll_bits(run, encode(run, images).codes, slices)
    threshold = float(torch.quantile(torch.exp2(-nll).flatten(), 0.1))
    result = heal(run, images, slices, threshold, seed=0)
    assert torch.equal(result.redrawn, torch.exp2(-nll) < threshold)
    changed = result.healed_codes != result.codes
    assert bool(changed.any()) and not bool((changed & ~result.redrawn).any())
    outside = result.prior_map[:, :, :]  # the prior map is zero far from redrawn codes
    far = torch.nn.functional.max_pool2d(result.redrawn.float().unsqueeze(1), 3, 1, 1)[:, 0]
    far = far.repeat_interleave(4, 1).repeat_interleave(4, 2) == 0
    far = torch.nn.functional.max_pool2d((~far).float().unsqueeze(1), 11, 1, 5)[:, 0] == 0
    assert float(outside[far].abs().max()) < 1e-6


def test_pixel_and_image_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(4, 32, 32, generator=generator) < 0.1
    maps = truth.float() * 0.5 + torch.rand(4, 32, 32, generator=generator)
    brain = torch.ones(4, 32, 32, dtype=torch.bool)
    brain[:, :4] = False
    truth[0] = False  # one image without lesion
    scores = PixelScores.empty()
    scores.update(maps, truth, brain)
    summary = scores.summary()
    values, labels = maps[brain].numpy(), truth[brain].numpy()
    assert summary["pixel_ap"] == pytest.approx(average_precision_score(labels, values), abs=2e-3)
    assert summary["pixel_auroc"] == pytest.approx(roc_auc_score(labels, values), abs=1e-4)
    image_scores = image_score(maps).numpy()
    has = truth.flatten(1).any(1).numpy()
    assert summary["image_auroc"] == pytest.approx(roc_auc_score(has, image_scores), abs=1e-6)
    assert summary["image_ap"] == pytest.approx(average_precision_score(has, image_scores), abs=1e-6)
    brute = max(
        2 * np.sum((values >= t) & labels) / (np.sum(values >= t) + np.sum(labels)) for t in np.unique(values)
    )
    assert best_dice(torch.from_numpy(values), torch.from_numpy(labels))["best_dice"] == pytest.approx(
        brute, abs=0.01
    )
