"""Anomaly maps: unlikely codes redrawn from the prior (healing), the residual against the healed
image, smoothing, and one score per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brainvq.anomaly.likelihood import (
    SMOOTHING_SIGMA,
    TOP_FRACTION,
    Healed,
    _condition,
    code_nll_bits,
    decode,
    encode,
)
from brainvq.runs import LoadedRun
from brainvq.sampling.maps import resample_codes


def gaussian_blur(maps: torch.Tensor, sigma: float = SMOOTHING_SIGMA) -> torch.Tensor:
    """Separable Gaussian smoothing of maps (B, H, W)."""
    radius = max(1, int(3 * sigma))
    grid = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def heal(
    run: LoadedRun, images: torch.Tensor, slices: torch.Tensor | None, threshold: float, *, seed: int = 0
) -> Healed:
    """Redraw codes with probability below ``threshold`` given the rest, decode, and make both maps."""
    encoded = encode(run, images)
    codes, recon, top = encoded.codes, encoded.recon, encoded.top
    nll = code_nll_bits(run, codes, slices, top)
    redraw = torch.exp2(-nll) < threshold
    condition = _condition(run, slices)
    new = resample_codes(
        run.require_prior(), codes, redraw, generator=seed, condition=condition, context=top, device=run.device
    )
    healed = decode(run, new, top)
    scale = images.shape[-1] // codes.shape[-1]
    region = redraw.float().repeat_interleave(scale, 1).repeat_interleave(scale, 2)  # (B, h, w) -> (B, H, W)
    region = F.max_pool2d(region.unsqueeze(1), 3, 1, 1).squeeze(1)  # one pixel of margin
    prior_map = gaussian_blur((images[:, 0] - healed[:, 0]).abs() * region)
    residual_map = gaussian_blur((images[:, 0] - recon[:, 0]).abs())
    return Healed(images, codes, new, recon, healed, redraw, nll, prior_map, residual_map)


def image_score(maps: torch.Tensor, fraction: float = TOP_FRACTION) -> torch.Tensor:
    """Per-image score (B,): the mean of the top ``fraction`` of the map's pixels."""
    flat = maps.flatten(1)
    count = max(1, int(fraction * flat.shape[1]))
    return flat.topk(count, dim=1).values.mean(1)
