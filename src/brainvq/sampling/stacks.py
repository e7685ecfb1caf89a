"""Whole stacks: 32 slices that belong to one brain.

Independent slices drawn for indices 0..31 do not make one brain: each slice's top map follows no other.
The stack prior (``train-prior --level stack``; a transformer like the top prior that also reads the
previous slice's top map, :mod:`brainvq.models.transformer`) draws slice 0's top map with the context
"no previous slice", then slice k's given slice k-1's, so the anatomy carries from slice to slice. The
bottom maps are then drawn for all slices of a stack in one batch, each given its own slice's top map
and index, exactly as for single slices, and decoded. By default the slices of a stack share the
Gumbel noise of their bottom-map draws (``sample.stack_shared_noise``): where neighbouring slices'
code distributions agree they draw the same code, so fine texture carries across slices too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from brainvq.codes import decode_in_batches
from brainvq.devices import resolve_device
from brainvq.sampling.maps import sample_codes
from brainvq.sampling.settings import Sampling, resolve_sampling


@dataclass
class StackResult:
    """``num_stacks`` generated stacks and how they were made."""

    images: torch.Tensor  # (N, S, H, W) in [0, 1]
    top_codes: torch.Tensor  # (N, S, h/t, w/t)
    codes: torch.Tensor  # (N, S, h, w)
    seconds: float  # all of it, per call
    top_seconds: float
    bottom_seconds: float
    seed: int
    sampling: Sampling
    shared_noise: bool  # the bottom maps of a stack's slices shared their Gumbel noise


@torch.no_grad()
def draw_stack_top_maps(
    stack_prior: Any,
    num_stacks: int,
    num_slices: int,
    shape: tuple[int, int],
    *,
    generator: torch.Generator,
    **options: Any,
) -> torch.Tensor:
    """Top maps (N, S, h, w): slice 0 given "no previous slice", slice k given slice k-1's map.
    ``options`` go to :func:`sample_codes` (temperature, top_p, sampler, device, batch_size)."""
    config = stack_prior.config
    none = int(config.context_num_embeddings) - 1  # the "no previous slice" code
    previous = torch.full((num_stacks, *shape), none, dtype=torch.long)
    maps = []
    for index in range(num_slices):
        condition = torch.full((num_stacks,), index, dtype=torch.long) if config.condition_on_slice else None
        current = sample_codes(stack_prior, num_stacks, shape, generator=generator, condition=condition,
                               context=previous, **options)  # fmt: skip
        maps.append(current)
        previous = current
    return torch.stack(maps, 1)  # S x (N, h, w) -> (N, S, h, w)


@torch.no_grad()
def sample_stacks(
    run: Any,
    num_stacks: int = 1,
    *,
    seed: int = 0,
    temperature: float | None = None,
    top_map_temperature: float | None = None,
    sampler: str = "fast",
    device: torch.device | str | None = None,
    progress: bool = False,
    shared_noise: bool | None = None,
) -> StackResult:
    """Generate ``num_stacks`` stacks of the run's slice count with a loaded two-level run that has a
    stack prior. The temperatures default to the run's ``sample`` settings, as for single slices, and
    ``shared_noise`` to ``sample.stack_shared_noise``: the bottom maps of a stack's slices share their
    Gumbel noise, so that neighbours whose code distributions agree draw the same codes (each slice
    is still an exact draw of its own; only how the slices go together changes)."""
    stack_prior, prior = run.require_stack_prior(), run.require_prior()
    device = resolve_device(device) if device is not None else run.device
    stack_prior, prior, vqvae = stack_prior.to(device).eval(), prior.to(device).eval(), run.vqvae.to(device).eval()
    how = resolve_sampling(run.config.sample, 2, temperature, None, top_map_temperature, None, False)
    shared = bool(run.config.sample.stack_shared_noise if shared_noise is None else shared_noise)
    num_slices = int(stack_prior.config.num_slices)
    generator = torch.Generator().manual_seed(seed)
    options: dict[str, Any] = dict(sampler=sampler, device=device, progress=progress)
    started = time.perf_counter()
    tops = draw_stack_top_maps(stack_prior, num_stacks, num_slices, run.top_code_shape, generator=generator,
                               temperature=how.top_map_temperature, top_p=how.top_map_top_p, batch_size=num_stacks,
                               **options)  # fmt: skip
    drawn_tops = time.perf_counter()
    flat_tops = tops.reshape(num_stacks * num_slices, *tops.shape[2:])  # (N, S, h, w) -> (N*S, h, w)
    condition = torch.arange(num_slices).repeat(num_stacks) if prior.config.condition_on_slice else None
    codes = sample_codes(prior, num_stacks * num_slices, run.code_shape, generator=generator, condition=condition,
                         context=flat_tops, temperature=how.temperature, top_p=how.top_p, batch_size=num_slices,
                         shared_noise=shared, **options)  # fmt: skip
    drawn = time.perf_counter()
    images = decode_in_batches(vqvae, codes, flat_tops, num_slices, device)[:, 0]  # (N*S, 1, H, W) -> (N*S, H, W)
    finished = time.perf_counter()
    return StackResult(
        images=images.reshape(num_stacks, num_slices, *images.shape[1:]),  # (N*S, H, W) -> (N, S, H, W)
        top_codes=tops,
        codes=codes.reshape(num_stacks, num_slices, *codes.shape[1:]),  # (N*S, h, w) -> (N, S, h, w)
        seconds=finished - started,
        top_seconds=drawn_tops - started,
        bottom_seconds=drawn - drawn_tops,
        seed=seed,
        sampling=how,
        shared_noise=shared,
    )
