"""The stages' training tasks: the reconstruction loss and its per-image weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from brainvq.config import Config, apply_overrides, config_from_dict
from brainvq.data.dataset import load_split
from brainvq.errors import ConfigError
from brainvq.training.tasks import VQVAETask, reconstruction_loss


@pytest.mark.parametrize("kind", ["mse", "l1", "mse+ssim"])
def test_unweighted_loss_is_the_plain_mean_and_equal_weights_change_nothing(kind: str) -> None:
    torch.manual_seed(0)
    prediction, target = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    plain = reconstruction_loss(kind, prediction, prediction.clamp(0, 1), target, 0.5)
    if kind == "mse":
        torch.testing.assert_close(plain, F.mse_loss(prediction, target))
    if kind == "l1":
        torch.testing.assert_close(plain, F.l1_loss(prediction, target))
    same = reconstruction_loss(kind, prediction, prediction.clamp(0, 1), target, 0.5, torch.full((4,), 0.3))
    torch.testing.assert_close(same, plain)


def test_weights_make_a_weighted_mean_over_images() -> None:
    prediction = torch.zeros(3, 1, 4, 4)
    target = torch.stack([torch.full((1, 4, 4), v) for v in (0.1, 0.2, 0.4)])  # per-image MSE .01, .04, .16
    weights = torch.tensor([1.0, 1.0, 0.1])
    loss = reconstruction_loss("mse", prediction, prediction, target, 0.0, weights)
    torch.testing.assert_close(loss, torch.tensor((0.01 + 0.04 + 0.1 * 0.16) / 2.1))


def test_dropped_images_get_the_configured_weight(phantom_root: Path, tiny_config: Config) -> None:
    train_set = load_split(phantom_root, "train")
    config = apply_overrides(tiny_config, ["model.levels=2", "model.bottom_dropout=0.5"])
    assert VQVAETask(config, config.train, train_set, None).image_weights(torch.tensor([True, False])) is None
    weighted = apply_overrides(config, ["model.bottom_dropout_weight=0.1"])
    task = VQVAETask(weighted, weighted.train, train_set, None)
    torch.testing.assert_close(
        task.image_weights(torch.tensor([True, False, True])), torch.tensor([1.0, 0.1, 1.0])
    )
    assert task.image_weights(None) is None  # a one-level model drops nothing


def test_context_corruption_moves_codes_within_each_map_and_leaves_empty_context_alone() -> None:
    from brainvq.training.tasks import corrupt_context

    torch.manual_seed(0)
    context = torch.stack([torch.arange(256).view(16, 16), torch.full((16, 16), 512)])  # a map, "no previous"
    corrupted = corrupt_context(context, 0.25)
    changed = (corrupted[0] != context[0]).float().mean()
    assert 0.15 < float(changed) < 0.3  # about a quarter (a few positions draw their own code back)
    assert set(corrupted[0].flatten().tolist()) <= set(range(256))  # codes of the same map only
    assert torch.equal(corrupted[1], context[1])  # a "no previous slice" map stays one
    assert torch.equal(corrupt_context(context, 0.0), context)
    with pytest.raises(ConfigError, match="context_corruption"):
        config_from_dict({"top_prior_train": {"context_corruption": 1.0}})
