"""The VQ-VAE (van den Oord et al. 2017): encoder -> vector quantiser -> decoder.

Default shape (the seed design), for 256x256 slices and ``downsample=4``::

    encoder: Conv4x4/2 (1 -> hidden/2), ReLU, Conv4x4/2 (-> hidden), ReLU,
             2 x [x + Conv1x1(ReLU(Conv3x3(ReLU(x))))], ReLU, Conv1x1 (-> embedding_dim)
    codes:   64 x 64 indices into a codebook of num_embeddings vectors
    decoder: Conv3x3 (embedding_dim -> hidden), 2 residual blocks, ReLU,
             ConvT4x4/2 (-> hidden/2), ReLU, ConvT4x4/2 (-> 1)

``downsample=8`` adds a third stride-2 stage (32 x 32 codes). Inputs are in [0, 1]; the encoder
centres them at 0. With ``output='clamp'`` the decoder is linear and its output is clamped to
[0, 1] (the loss sees the unclamped values, so the gradient never vanishes at the bounds and
black background is reachable exactly); ``output='sigmoid'`` squashes it instead.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from brainvq.config import ModelConfig
from brainvq.models.layers import ResidualStack
from brainvq.models.quantizer import VectorQuantizer


class VQVAEOutput(NamedTuple):
    """Result of :meth:`VQVAE.forward`."""

    recon: torch.Tensor  # (B, 1, H, W) in [0, 1]
    decoded: torch.Tensor  # (B, 1, H, W) decoder output before clamp/sigmoid (for the loss)
    indices: torch.Tensor  # (B, h, w) int64
    vq_loss: torch.Tensor  # codebook + commitment_cost * commitment
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    counts: torch.Tensor  # (K,) code uses in this batch


def _num_stages(downsample: int) -> int:
    stages = round(math.log2(downsample))
    if downsample < 2 or 2**stages != downsample:
        raise ValueError(f"downsample must be a power of two >= 2, got {downsample}")
    return stages


class Encoder(nn.Module):
    """Strided 4x4 convolutions, a residual stack, and a 1x1 projection to ``embedding_dim``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_channels
        widths = [config.in_channels] + [hidden // 2] * (_num_stages(config.downsample) - 1) + [hidden]
        self.down = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
            for c_in, c_out in itertools.pairwise(widths)
        )
        self.residual = ResidualStack(hidden, config.residual_hidden_channels, config.num_residual_blocks)
        self.project = nn.Conv2d(hidden, config.embedding_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - 0.5
        for conv in self.down:
            x = F.relu(conv(x))
        return self.project(self.residual(x))


class Decoder(nn.Module):
    """A 3x3 convolution from the codes, a residual stack, and strided 4x4 transposed convolutions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_channels
        self.expand = nn.Conv2d(config.embedding_dim, hidden, kernel_size=3, padding=1)
        self.residual = ResidualStack(hidden, config.residual_hidden_channels, config.num_residual_blocks)
        widths = [hidden] + [hidden // 2] * (_num_stages(config.downsample) - 1) + [config.in_channels]
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
            for c_in, c_out in itertools.pairwise(widths)
        )

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        x = self.residual(self.expand(quantized))
        for i, conv in enumerate(self.up):
            x = conv(x)
            if i < len(self.up) - 1:
                x = F.relu(x)
        return x + 0.5


class VQVAE(nn.Module):
    """Encoder, vector quantiser and decoder; see the module docstring for the shapes."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        if config.output not in ("clamp", "sigmoid"):
            raise ValueError(f"model.output must be 'clamp' or 'sigmoid', got {config.output!r}")
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(
            num_embeddings=config.num_embeddings,
            embedding_dim=config.embedding_dim,
            commitment_cost=config.commitment_cost,
            kind=config.quantizer,
            decay=config.ema_decay,
            epsilon=config.ema_epsilon,
            init=config.codebook_init,
            dead_code_steps=config.dead_code_steps,
        )
        self.decoder = Decoder(config)

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        q = self.quantizer(self.encoder(x))
        decoded = self.decoder(q.quantized.to(x.dtype))
        recon = self._to_image(decoded)
        return VQVAEOutput(
            recon, decoded, q.indices, q.loss, q.codebook_loss, q.commitment_loss, q.perplexity, q.counts
        )

    def _to_image(self, decoded: torch.Tensor) -> torch.Tensor:
        if self.config.output == "sigmoid":
            return torch.sigmoid(decoded - 0.5)
        return decoded.clamp(0.0, 1.0)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) int64 for images (B, 1, H, W) in [0, 1]."""
        z = self.encoder(x)
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B, D, h, w) -> (B*h*w, D)
            indices = self.quantizer.nearest(flat)
        return indices.reshape(z.shape[0], z.shape[2], z.shape[3])  # (B*h*w,) -> (B, h, w)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] for code indices (B, h, w)."""
        quantized = self.quantizer.lookup(indices)
        dtype = next(self.decoder.parameters()).dtype
        return self._to_image(self.decoder(quantized.to(dtype)))

    def code_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) code map shape for images of ``image_size`` (H, W)."""
        factor = self.config.downsample
        if image_size[0] % factor or image_size[1] % factor:
            raise ValueError(f"image size {image_size} is not divisible by the downsampling factor {factor}")
        return image_size[0] // factor, image_size[1] // factor
