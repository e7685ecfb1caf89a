"""Sampling new brains: ancestral sampling of code maps from the prior, then decoding.

Two samplers draw the same maps for the same model, seed and temperature:

* ``naive`` runs the whole prior over the whole map once per position (h*w full passes).
* ``fast`` (default) computes, for each position, only what that position's logits depend on.
  Each prior stage is causal with a known radius, so the logits at (i, j) depend only on codes in
  rows i-R..i and columns j-R..j+R (R = the prior's receptive radius). The fast sampler runs the
  prior's own stages on that window and, after each stage, crops to the part the later stages
  still need; the map's real borders stay real borders, so the result equals the full pass up to
  float rounding. The work per step falls from the whole map to a few positions per layer.
  (Compare the caching approach of Ramachandran et al. 2017, "Fast Generation for Convolutional
  Autoregressive Models"; window recomputation needs no per-layer cache code.)

Draws use the Gumbel-max trick with noise from a seeded CPU ``torch.Generator``, so both
samplers consume identical random numbers and a draw only changes if float rounding moves the
top two perturbed logits past each other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from brainvq.errors import RunError
from brainvq.models.pixelcnn import Prior, State


@dataclass
class SampleResult:
    """Generated code maps and images, with what made them."""

    codes: torch.Tensor  # (N, h, w) int64
    images: torch.Tensor  # (N, 1, H, W) float in [0, 1]
    slices: list[int] | None
    seconds: float
    sampling_seconds: float
    decoding_seconds: float
    sampler: str
    seed: int
    temperature: float
    paths: list[str] = field(default_factory=list)


def draw(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Sample one code per row of ``logits`` (B, K) from softmax(logits / temperature) (Gumbel-max).

    Always draws (B, K) uniforms from ``generator`` so the random stream does not depend on values.
    """
    uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float32)
    uniform = uniform.clamp_(1e-20, 1.0 - 1e-7).to(logits.device)
    if temperature <= 0:
        return logits.argmax(1)
    gumbel = -torch.log(-torch.log(uniform))
    return (logits.float() / temperature + gumbel).argmax(1)


def _crop(state: State, rows: slice, cols: slice) -> State:
    if isinstance(state, tuple):
        return state[0][:, :, rows, cols], state[1][:, :, rows, cols]
    return state[:, :, rows, cols]


def window_logits(
    prior: Prior, codes: torch.Tensor, i: int, j: int, condition: torch.Tensor | None
) -> torch.Tensor:
    """Logits (B, K) at position (i, j), computed on the causal window around it (exact)."""
    width = codes.shape[2]
    radius = prior.receptive_radius
    top, left = max(0, i - radius), max(0, j - radius)
    state = prior.embed(codes[:, top : i + 1, left : min(width, j + radius + 1)], (top, left))
    row, col, remaining = i - top, j - left, radius
    for stage in prior.stages:
        state = stage(state, condition)
        remaining -= int(stage.radius)  # type: ignore[arg-type]
        first_row, first_col = max(0, row - remaining), max(0, col - remaining)
        state = _crop(state, slice(first_row, row + 1), slice(first_col, col + remaining + 1))
        row, col = row - first_row, col - first_col
    assert isinstance(state, torch.Tensor)
    return state[:, :, row, col]


@torch.no_grad()
def sample_codes(
    prior: Prior,
    num_samples: int,
    shape: tuple[int, int],
    *,
    generator: torch.Generator | int = 0,
    temperature: float = 1.0,
    condition: torch.Tensor | None = None,
    sampler: str = "fast",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling in raster order from an all-zero map; returns codes (N, h, w) int64.

    ``generator`` is a CPU ``torch.Generator`` or a seed. ``condition`` holds one slice index per
    sample when the prior is conditioned. Same prior, seed, temperature, batch size and device
    give the same maps, with either sampler.
    """
    if sampler not in ("fast", "naive"):
        raise ValueError(f"sampler must be 'fast' or 'naive', got {sampler!r}")
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    device = torch.device(device)
    prior.eval()
    height, width = shape
    out = []
    bar = tqdm(
        total=num_samples * height * width,
        desc=f"sampling ({sampler})",
        disable=not progress,
        unit="code",
        unit_scale=True,
        mininterval=1.0,
    )
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        codes = torch.zeros(count, height, width, dtype=torch.long, device=device)
        cond = condition[start : start + count].to(device) if condition is not None else None
        for i in range(height):
            for j in range(width):
                if sampler == "fast":
                    logits = window_logits(prior, codes, i, j, cond)
                else:
                    logits = prior(codes, cond)[:, :, i, j]
                codes[:, i, j] = draw(logits, temperature, generator)
            bar.update(count * width)
        out.append(codes.cpu())
    bar.close()
    return torch.cat(out)


def slice_conditions(num_samples: int, prior: Prior, slice_index: int | None) -> torch.Tensor | None:
    """One slice index per sample: ``slice_index`` for all, or spread over the volume when None."""
    config = prior.config
    if not config.condition_on_slice:
        if slice_index is not None:
            raise RunError("--slice needs a prior trained with prior.condition_on_slice=true")
        return None
    if slice_index is not None:
        if not 0 <= slice_index < config.num_slices:
            raise RunError(f"--slice must be in 0..{config.num_slices - 1}, got {slice_index}")
        return torch.full((num_samples,), slice_index, dtype=torch.long)
    spread = torch.linspace(0.15 * (config.num_slices - 1), 0.85 * (config.num_slices - 1), num_samples)
    return spread.round().long()


@torch.no_grad()
def sample(
    run: Any,
    num_samples: int = 16,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    slice_index: int | None = None,
    batch_size: int = 16,
    sampler: str = "fast",
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> SampleResult:
    """Generate ``num_samples`` new slices with a loaded run (see :func:`brainvq.load_run`)."""
    if run.prior is None:
        raise RunError(f"{run.root.root}: this run has no trained prior (run `brainvq train-prior` first)")
    device = torch.device(device)
    prior, vqvae = run.prior.to(device).eval(), run.vqvae.to(device).eval()
    condition = slice_conditions(num_samples, prior, slice_index)
    started = time.perf_counter()
    codes = sample_codes(
        prior,
        num_samples,
        run.code_shape,
        generator=seed,
        temperature=temperature,
        condition=condition,
        sampler=sampler,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    sampled = time.perf_counter()
    images = torch.cat(
        [vqvae.decode(codes[s : s + batch_size].to(device)).cpu() for s in range(0, num_samples, batch_size)]
    )
    finished = time.perf_counter()
    return SampleResult(
        codes=codes,
        images=images,
        slices=condition.tolist() if condition is not None else None,
        seconds=finished - started,
        sampling_seconds=sampled - started,
        decoding_seconds=finished - sampled,
        sampler=sampler,
        seed=seed,
        temperature=temperature,
    )


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for ``count`` images."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def as_uint8(images: torch.Tensor) -> Sequence[Any]:
    """(N, 1, H, W) floats in [0, 1] -> list of (H, W) uint8 numpy arrays."""
    return [(img[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy() for img in images]
