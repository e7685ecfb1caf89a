"""The VQ-VAE (van den Oord et al. 2017): encoder -> vector quantiser -> decoder.

Default shape (the seed design), for 256x256 slices and ``downsample=4``::

    encoder: Conv4x4/2 (1 -> hidden/2), ReLU, Conv4x4/2 (-> hidden), ReLU,
             2 x [x + Conv1x1(ReLU(Conv3x3(ReLU(x))))], ReLU, Conv1x1 (-> embedding_dim)
    codes:   64 x 64 indices into a codebook of num_embeddings vectors
    decoder: Conv3x3 (embedding_dim -> hidden), 2 residual blocks, ReLU,
             ConvT4x4/2 (-> hidden/2), ReLU, ConvT4x4/2 (-> 1)

``downsample=8`` adds a third stride-2 stage (32 x 32 codes).

:class:`TwoLevelVQVAE` (``levels=2``, VQ-VAE-2: Razavi et al. 2019) adds a top map::

    top encoder:  bottom features -> Conv4x4/2 x log2(top_downsample), residual stack, Conv1x1 -> top codes
    top decoder:  top codes -> Conv3x3, residual stack, ConvT4x4/2 x log2(top_downsample) -> embedding_dim
    bottom codes: Conv1x1([bottom features, top decoder output]) -> quantiser (the bottom sees the top)
    decoder:      [bottom codes, upsampled top codes] -> the decoder above (2 x embedding_dim in)

In training, ``bottom_dropout`` of the images reach the decoder with their bottom vectors zeroed, so
the top codes must carry the image's structure by themselves, and ``bottom_corruption`` of the
bottom codes are swapped for random codebook entries, so the decoder learns to overrule bottom codes
that disagree with the top map and their neighbours (as the bottom prior's mistakes do).

e.g. 64 x 64 bottom codes and 32 x 32 (``top_downsample=2``) or 16 x 16 (``4``) top codes. Inputs are in [0, 1]; the encoder
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

from brainvq.models.layers import ResidualStack
from brainvq.models.quantizer import VectorQuantizer
from brainvq.models.settings import ModelConfig


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
    top_indices: torch.Tensor | None = None  # (B, h/t, w/t) int64, two-level models only
    top_perplexity: torch.Tensor | None = None
    top_counts: torch.Tensor | None = None  # (K_top,)
    kept: torch.Tensor | None = None  # (B,) bool: the decoder saw the image's bottom codes (False: dropped)


class Codes(NamedTuple):
    """What ``encode`` returns and ``decode`` takes, for one level or two: the ``bottom`` map (B, h, w)
    and, for a two-level model, the ``top`` map (B, h/t, w/t); int64. ``top`` is None for one level."""

    bottom: torch.Tensor
    top: torch.Tensor | None = None


def _num_stages(downsample: int) -> int:
    stages = round(math.log2(downsample))
    if downsample < 2 or 2**stages != downsample:
        raise ValueError(f"downsample must be a power of two >= 2, got {downsample}")
    return stages


class Encoder(nn.Module):
    """Strided 4x4 convolutions, a residual stack, and a 1x1 projection to ``embedding_dim``."""

    def __init__(self, config: ModelConfig, extra_channels: int = 0) -> None:
        super().__init__()
        hidden = config.hidden_channels
        widths = [config.in_channels] + [hidden // 2] * (_num_stages(config.downsample) - 1) + [hidden]
        self.down = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
            for c_in, c_out in itertools.pairwise(widths)
        )
        self.residual = ResidualStack(hidden, config.residual_hidden_channels, config.num_residual_blocks)
        self.project = nn.Conv2d(hidden + extra_channels, config.embedding_dim, kernel_size=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden features (B, hidden, h, w) before the projection to the codebook's dimension."""
        x = x - 0.5
        for conv in self.down:
            x = F.relu(conv(x))
        return self.residual(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(x))


class Decoder(nn.Module):
    """A 3x3 convolution from the codes, a residual stack, and strided 4x4 transposed convolutions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_channels
        self.expand = nn.Conv2d(config.embedding_dim * config.levels, hidden, kernel_size=3, padding=1)
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
        self.quantizer = _quantizer(config, config.num_embeddings)
        self.decoder = Decoder(config)

    num_levels = 1

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
    def encode(self, x: torch.Tensor) -> Codes:
        """The code map (``bottom``: (B, h, w) int64) of images (B, 1, H, W) in [0, 1]."""
        return Codes(_nearest(self.quantizer, self.encoder(x)))

    @torch.no_grad()
    def decode(self, codes: Codes) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] for :class:`Codes` (their ``bottom`` map, (B, h, w))."""
        quantized = self.quantizer.lookup(codes.bottom)
        dtype = next(self.decoder.parameters()).dtype
        return self._to_image(self.decoder(quantized.to(dtype)))

    def code_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) code map shape for images of ``image_size`` (H, W)."""
        factor = self.config.downsample
        if image_size[0] % factor or image_size[1] % factor:
            raise ValueError(f"image size {image_size} is not divisible by the downsampling factor {factor}")
        return image_size[0] // factor, image_size[1] // factor


def _nearest(quantizer: VectorQuantizer, z: torch.Tensor) -> torch.Tensor:
    """Nearest-code indices (B, h, w) of encoder outputs ``z`` (B, D, h, w), in float32."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B, D, h, w) -> (B*h*w, D)
        indices = quantizer.nearest(flat)
    return indices.reshape(z.shape[0], z.shape[2], z.shape[3])  # (B*h*w,) -> (B, h, w)


def _quantizer(config: ModelConfig, num_embeddings: int) -> VectorQuantizer:
    return VectorQuantizer(
        num_embeddings=num_embeddings,
        embedding_dim=config.embedding_dim,
        commitment_cost=config.commitment_cost,
        kind=config.quantizer,
        decay=config.ema_decay,
        epsilon=config.ema_epsilon,
        init=config.codebook_init,
        dead_code_steps=config.dead_code_steps,
    )


class TopEncoder(nn.Module):
    """Bottom features -> strided 4x4 convolutions -> residual stack -> 1x1 to ``embedding_dim``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_channels
        self.down = nn.ModuleList(
            nn.Conv2d(hidden, hidden, kernel_size=4, stride=2, padding=1)
            for _ in range(_num_stages(config.top_downsample))
        )
        self.residual = ResidualStack(hidden, config.residual_hidden_channels, config.num_residual_blocks)
        self.project = nn.Conv2d(hidden, config.embedding_dim, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features
        for conv in self.down:
            x = F.relu(conv(x))
        return self.project(self.residual(x))


class Upsample(nn.Module):
    """Top-grid features -> bottom grid: an optional 3x3 conv + residual stack, then strided 4x4
    transposed convolutions (``embedding_dim`` channels out)."""

    def __init__(self, config: ModelConfig, residual: bool) -> None:
        super().__init__()
        dim, hidden = config.embedding_dim, config.hidden_channels
        stages = _num_stages(config.top_downsample)
        self.body = (
            nn.Sequential(
                nn.Conv2d(dim, hidden, kernel_size=3, padding=1),
                ResidualStack(hidden, config.residual_hidden_channels, config.num_residual_blocks),
            )
            if residual
            else nn.Identity()
        )
        widths = [hidden if residual else dim] + [dim] * stages
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
            for c_in, c_out in itertools.pairwise(widths)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        for i, conv in enumerate(self.up):
            x = conv(x)
            if i < len(self.up) - 1:
                x = F.relu(x)
        return x


class TwoLevelVQVAE(nn.Module):
    """VQ-VAE-2 (Razavi et al. 2019) with a bottom and a top code map; see the module docstring.

    ``encode`` returns :class:`Codes` with both maps; ``decode`` takes them back. The VQ loss is the sum of
    both levels' losses; ``indices``/``counts``/``perplexity`` of the output are the bottom level's.
    """

    num_levels = 2

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.output not in ("clamp", "sigmoid"):
            raise ValueError(f"model.output must be 'clamp' or 'sigmoid', got {config.output!r}")
        self.encoder = Encoder(config, extra_channels=config.embedding_dim)
        self.top_encoder = TopEncoder(config)
        self.top_quantizer = _quantizer(config, config.top_num_embeddings)
        self.top_decoder = Upsample(config, residual=True)  # top codes -> bottom grid, for the bottom encoder
        self.quantizer = _quantizer(config, config.num_embeddings)
        self.top_upsample = Upsample(config, residual=False)  # top codes -> bottom grid, for the decoder
        self.decoder = Decoder(config)

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        features = self.encoder.features(x)
        top = self.top_quantizer(self.top_encoder(features))
        guided = torch.cat([features, self.top_decoder(top.quantized.to(features.dtype))], 1)  # (B, hid+D, h, w)
        bottom = self.quantizer(self.encoder.project(guided))
        corrupted = self._corrupt(bottom.quantized)
        kept = self._kept(x.shape[0], x.device)
        keep = kept.to(corrupted.dtype).view(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
        bottom_vectors = corrupted * keep  # (B, D, h, w), dropped images zeroed
        decoded = self.decoder(self._decoder_input(top.quantized, bottom_vectors, x.dtype))
        return VQVAEOutput(
            recon=self._to_image(decoded),
            decoded=decoded,
            indices=bottom.indices,
            vq_loss=top.loss + bottom.loss,
            codebook_loss=top.codebook_loss + bottom.codebook_loss,
            commitment_loss=top.commitment_loss + bottom.commitment_loss,
            perplexity=bottom.perplexity,
            counts=bottom.counts,
            top_indices=top.indices,
            top_perplexity=top.perplexity,
            top_counts=top.counts,
            kept=kept,
        )

    def _corrupt(self, bottom: torch.Tensor) -> torch.Tensor:
        """In training, replace a ``bottom_corruption`` fraction of the bottom vectors by random codes."""
        if not self.training or self.config.bottom_corruption <= 0:
            return bottom
        batch, _, height, width = bottom.shape
        swap = torch.rand(batch, 1, height, width, device=bottom.device) < self.config.bottom_corruption
        random_codes = torch.randint(self.config.num_embeddings, (batch, height, width), device=bottom.device)
        return torch.where(swap, self.quantizer.lookup(random_codes).to(bottom.dtype), bottom)  # (B, D, h, w)

    def _kept(self, batch: int, device: torch.device) -> torch.Tensor:
        """Which images (B,) keep their bottom vectors: in training, a ``bottom_dropout`` fraction
        is dropped (the decoder sees their top codes alone); in eval, all are kept."""
        if not self.training or self.config.bottom_dropout <= 0:
            return torch.ones(batch, dtype=torch.bool, device=device)
        return torch.rand(batch, device=device) >= self.config.bottom_dropout

    def _decoder_input(self, top: torch.Tensor, bottom: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        upsampled = self.top_upsample(top.to(dtype))
        return torch.cat([bottom.to(upsampled.dtype), upsampled], 1)  # (B, 2D, h, w)

    def _to_image(self, decoded: torch.Tensor) -> torch.Tensor:
        if self.config.output == "sigmoid":
            return torch.sigmoid(decoded - 0.5)
        return decoded.clamp(0.0, 1.0)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> Codes:
        """Top (B, h/t, w/t) and bottom (B, h, w) code indices for images (B, 1, H, W) in [0, 1]."""
        features = self.encoder.features(x)
        top = _nearest(self.top_quantizer, self.top_encoder(features))
        top_vectors = self.top_quantizer.lookup(top).to(features.dtype)
        guided = torch.cat([features, self.top_decoder(top_vectors)], 1)  # (B, hid+D, h, w)
        return Codes(_nearest(self.quantizer, self.encoder.project(guided)), top)

    @torch.no_grad()
    def decode(self, codes: Codes) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] for :class:`Codes` (bottom and top maps)."""
        if codes.top is None:
            raise ValueError("this VQ-VAE has two levels: decoding needs the top code map too")
        return self._decode_vectors(self.top_quantizer.lookup(codes.top), self.quantizer.lookup(codes.bottom))

    @torch.no_grad()
    def decode_top(self, top: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) from top codes (B, h/t, w/t) alone, the bottom vectors zeroed: what the
        decoder makes of the top map by itself (a coarse image when trained with ``bottom_dropout``)."""
        vectors = self.top_quantizer.lookup(top)  # (B, D, h/t, w/t)
        height, width = top.shape[1] * self.config.top_downsample, top.shape[2] * self.config.top_downsample
        return self._decode_vectors(vectors, vectors.new_zeros(*vectors.shape[:2], height, width))

    def _decode_vectors(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """Images from top (B, D, h/t, w/t) and bottom (B, D, h, w) codebook vectors."""
        dtype = next(self.decoder.parameters()).dtype
        return self._to_image(self.decoder(self._decoder_input(top, bottom, dtype)))

    def code_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The bottom (h, w) code map shape for images of ``image_size`` (H, W)."""
        factor = self.config.downsample * self.config.top_downsample
        if image_size[0] % factor or image_size[1] % factor:
            raise ValueError(f"image size {image_size} is not divisible by the downsampling factor {factor}")
        return image_size[0] // self.config.downsample, image_size[1] // self.config.downsample

    def top_code_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The top (h, w) code map shape for images of ``image_size`` (H, W)."""
        height, width = self.code_shape(image_size)
        return height // self.config.top_downsample, width // self.config.top_downsample


AnyVQVAE = VQVAE | TwoLevelVQVAE


def build_vqvae(config: ModelConfig) -> AnyVQVAE:
    """The VQ-VAE of ``config.levels`` (1: :class:`VQVAE`, 2: :class:`TwoLevelVQVAE`)."""
    if config.levels == 2:
        return TwoLevelVQVAE(config)
    if config.levels != 1:
        raise ValueError(f"model.levels must be 1 or 2, got {config.levels}")
    return VQVAE(config)
