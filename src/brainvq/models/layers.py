"""Building blocks shared by the models: residual blocks and masked convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """``x + Conv1x1(ReLU(Conv3x3(ReLU(x))))``, the VQ-VAE residual block (van den Oord et al. 2017)."""

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(channels, hidden_channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(hidden_channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv3(F.relu(x))))


class ResidualStack(nn.Module):
    """``num_blocks`` residual blocks followed by a ReLU (as in the DeepMind reference stack)."""

    def __init__(self, channels: int, hidden_channels: int, num_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualBlock(channels, hidden_channels) for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.blocks(x))


def causal_mask(kernel_size: int, mask_type: str) -> torch.Tensor:
    """A (k, k) mask keeping the rows above the centre and, on the centre row, the columns left of
    the centre; mask ``B`` also keeps the centre itself (van den Oord et al. 2016, PixelRNN paper)."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    centre = kernel_size // 2
    mask = torch.zeros(kernel_size, kernel_size)
    mask[:centre, :] = 1.0
    mask[centre, : centre + (1 if mask_type == "B" else 0)] = 1.0
    return mask


class MaskedConv2d(nn.Conv2d):
    """A 'same'-padded convolution whose kernel is multiplied by a causal mask (type A or B)."""

    mask: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.mask_type = mask_type
        self.register_buffer("mask", causal_mask(kernel_size, mask_type)[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class ConditionalBias(nn.Module):
    """A learned per-class bias ``(B, C, 1, 1)`` added to activations (conditional PixelCNN,
    van den Oord et al. 2016); returns zero when no condition is given."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, channels)
        nn.init.zeros_(self.embedding.weight)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.embedding(condition)[:, :, None, None]  # (B, C) -> (B, C, 1, 1)
