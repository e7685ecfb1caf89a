"""The stages' training tasks: the reconstruction loss and its per-image weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from brainvq.config import Config, apply_overrides
from brainvq.data.dataset import load_split
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
