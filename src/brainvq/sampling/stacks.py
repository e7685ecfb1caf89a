"""Whole stacks: 32 slices that belong to one brain.

Independent slices drawn for indices 0..31 do not make one brain: each slice's top map follows no other.
The stack prior (``train-prior --level stack``; a transformer like the top prior that also reads the
previous slice's top map, :mod:`brainvq.models.transformer`) draws slice 0's top map with the context
"no previous slice", then slice k's given slice k-1's, so the anatomy carries from slice to slice. The
bottom maps are then drawn for all slices of a stack in one batch, each given its own slice's top map
and index, exactly as for single slices, and decoded. The slices' bottom-map draws are coupled
(``sample.stack_coupling``): ``shared`` Gumbel noise, or a ``chain`` in which each slice's code keeps the
previous slice's code as often as the two distributions allow (:func:`brainvq.sampling.draws.draw`),
so fine texture carries across slices too; each slice is still an exact draw from the bottom prior.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from brainvq.codes import decode_in_batches
from brainvq.devices import resolve_device
from brainvq.errors import RunError
from brainvq.sampling.background import Background, run_background
from brainvq.sampling.maps import Guide, TopMaps, draw_top_maps, redraw_generator, sample_codes
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
    coupling: str  # how the bottom-map draws of a stack's slices went together (none, shared, chain)
    redrawn_top_maps: int = 0  # slices' top maps drawn again (at least once) for want of background
    unresolved_top_maps: int = 0  # still without background after MAX_REDRAWS rounds (kept)
    guidance: float = 0.0  # the independent top prior's weight in the top maps' draws (0: none)


@torch.no_grad()
def draw_stack_top_maps(
    stack_prior: Any,
    num_stacks: int,
    num_slices: int,
    shape: tuple[int, int],
    *,
    generator: torch.Generator,
    background: Background | None = None,
    **options: Any,
) -> TopMaps:
    """Top maps (N, S, h, w): slice 0 given "no previous slice", slice k given slice k-1's map. With a
    ``background`` reference, a slice's map with no background around the head is drawn again given
    the same previous map (:func:`brainvq.sampling.maps.draw_top_maps`) before the next slice follows
    it, so one bad map cannot carry through the stack. ``options`` go to :func:`sample_codes`
    (temperature, top_p, sampler, device, batch_size)."""
    config = stack_prior.config
    none = int(config.context_num_embeddings) - 1  # the "no previous slice" code
    previous = torch.full((num_stacks, *shape), none, dtype=torch.long)
    redraws = redraw_generator(generator)  # one stream for all the slices' redraws
    maps, redrawn, unresolved = [], 0, 0
    for index in range(num_slices):
        condition = torch.full((num_stacks,), index, dtype=torch.long) if config.condition_on_slice else None
        drawn = draw_top_maps(stack_prior, num_stacks, shape, background, generator=generator, condition=condition,
                              context=previous, redraws=redraws, **options)  # fmt: skip
        maps.append(drawn.codes)
        redrawn, unresolved = redrawn + drawn.redrawn, unresolved + drawn.unresolved
        previous = drawn.codes
    return TopMaps(torch.stack(maps, 1), redrawn, unresolved)  # S x (N, h, w) -> (N, S, h, w)


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
    coupling: str | None = None,
    background_check: bool | None = None,
    guidance: float | None = None,
) -> StackResult:
    """Generate ``num_stacks`` stacks of the run's slice count with a loaded two-level run that has a
    stack prior. The temperatures default to the run's ``sample`` settings, as for single slices (the top
    maps' to ``sample.stack_top_map_temperature``, the stack prior's own, when set), and
    ``coupling`` to ``sample.stack_coupling``: how the bottom-map draws of a stack's slices go together
    (each slice is still an exact draw of its own; only how the slices go together changes). A slice's top map with
    no background is drawn again unless ``background_check`` (default ``sample.top_map_background_check``)
    is False, as for single slices. ``guidance`` (default ``sample.stack_guidance``) above 0 draws the top
    maps from the stack prior times the independent top prior to that power (:class:`Guide`), which
    pulls each slice toward what its index looks like."""
    stack_prior, prior = run.require_stack_prior(), run.require_prior()
    device = resolve_device(device) if device is not None else run.device
    stack_prior, prior, vqvae = stack_prior.to(device).eval(), prior.to(device).eval(), run.vqvae.to(device).eval()
    stack_temperature = run.config.sample.stack_top_map_temperature
    top_map_temperature = stack_temperature if top_map_temperature is None else top_map_temperature
    how = resolve_sampling(run.config.sample, 2, temperature, None, top_map_temperature, None, background_check)
    background = run_background(run) if how.background_check else None
    how = how._replace(background_check=background is not None)  # what was done, for the record
    coupling = run.config.sample.stack_coupling if coupling is None else coupling
    guidance = run.config.sample.stack_guidance if guidance is None else guidance
    if guidance < 0:
        raise RunError(f"--guidance must be 0 or more, got {guidance}")
    guide = Guide(run.require_top_prior().to(device).eval(), guidance) if guidance > 0 else None
    num_slices = int(stack_prior.config.num_slices)
    generator = torch.Generator().manual_seed(seed)
    options: dict[str, Any] = dict(sampler=sampler, device=device, progress=progress)
    started = time.perf_counter()
    top_maps = draw_stack_top_maps(stack_prior, num_stacks, num_slices, run.top_code_shape, generator=generator,
                                   background=background, temperature=how.top_map_temperature,
                                   top_p=how.top_map_top_p, batch_size=num_stacks, guide=guide,
                                   **options)  # fmt: skip
    tops = top_maps.codes
    drawn_tops = time.perf_counter()
    flat_tops = tops.reshape(num_stacks * num_slices, *tops.shape[2:])  # (N, S, h, w) -> (N*S, h, w)
    condition = torch.arange(num_slices).repeat(num_stacks) if prior.config.condition_on_slice else None
    codes = sample_codes(prior, num_stacks * num_slices, run.code_shape, generator=generator, condition=condition,
                         context=flat_tops, temperature=how.temperature, top_p=how.top_p, batch_size=num_slices,
                         coupling=coupling, **options)  # fmt: skip
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
        coupling=coupling,
        guidance=guidance,
        redrawn_top_maps=top_maps.redrawn,
        unresolved_top_maps=top_maps.unresolved,
    )
