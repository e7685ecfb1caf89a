"""The judge: a small U-Net that segments brain tissue and tells which slice it is looking at.

Ronneberger, Fischer, Brox 2015, "U-Net: Convolutional Networks for Biomedical Image Segmentation".
Two heads share one encoder:

* ``segmentation``: per-pixel logits over background, CSF, grey matter and white matter (the
  OASIS mask levels 0/85/170/255 as classes 0..3);
* ``slice``: logits over the slice index 0..num_slices-1, from the pooled features of every level.

``features`` are the encoder's feature maps, each averaged over the image and concatenated: the
embedding in which brainvq computes its Fréchet distance, KID, precision and recall of samples.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from brainvq.models.settings import JudgeConfig


class JudgeOutput(NamedTuple):
    """What the judge returns for images (B, 1, H, W)."""

    segmentation: torch.Tensor  # (B, 4, H, W) logits
    slice_logits: torch.Tensor  # (B, num_slices)
    features: torch.Tensor  # (B, F) pooled encoder features


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions with batch norm and ReLU (the U-Net's unit). Batch norm, not a per-image
    norm: pooled features must keep how much of the image is brain, which tells the slice."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Judge(nn.Module):
    """U-Net with ``depth`` levels of ``base_channels * 2**level`` channels, and a slice head."""

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_channels * 2**level for level in range(config.depth)]
        self.down = nn.ModuleList()
        in_channels = 1
        for width in widths:
            self.down.append(conv_block(in_channels, width))
            in_channels = width
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(width * 2, width, 2, stride=2))
            self.merge.append(conv_block(width * 2, width))
        self.segmentation = nn.Conv2d(widths[0], 4, 1)
        self.num_features = sum(widths)
        self.slice_head = nn.Sequential(
            nn.Linear(self.num_features, 128), nn.ReLU(inplace=True), nn.Linear(128, config.num_slices)
        )

    def divisor(self) -> int:
        """Image sides must be multiples of this."""
        return int(2 ** (self.config.depth - 1))

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps, from full resolution down to the bottleneck."""
        skips = []
        x = images
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        return skips

    def forward(self, images: torch.Tensor) -> JudgeOutput:
        skips = self.encode(images)
        features = torch.cat([s.float().mean(dim=(2, 3)) for s in skips], dim=1)  # (B, C_l, h, w) -> (B, sum C_l)
        x = skips[-1]
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))  # (B, 2C, h, w) -> (B, C, h, w)
        slice_logits = self.slice_head(features)  # (B, F) -> (B, num_slices)
        return JudgeOutput(self.segmentation(x), slice_logits, features)
