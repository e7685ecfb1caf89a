"""New slices from a loaded run: the top map, then the bottom map, then the decoder (:func:`sample`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from brainvq.codes import decode_in_batches, slice_condition
from brainvq.devices import resolve_device
from brainvq.errors import RunError
from brainvq.models.priors import Prior
from brainvq.sampling.background import run_background
from brainvq.sampling.maps import TopMaps, draw_top_maps, sample_codes
from brainvq.sampling.settings import Sampling, resolve_sampling


@dataclass
class SampleResult:
    """Generated code maps and images, with what made them."""

    codes: torch.Tensor  # (N, h, w) int64 (the bottom map of a two-level run)
    images: torch.Tensor  # (N, 1, H, W) float in [0, 1]
    slices: list[int] | None
    seconds: float
    sampling_seconds: float
    decoding_seconds: float
    sampler: str
    seed: int
    sampling: Sampling  # the settings these samples were drawn with
    paths: list[str] = field(default_factory=list)
    top_codes: torch.Tensor | None = None  # (N, h/t, w/t) int64, two-level runs only
    redrawn_top_maps: int = 0  # top maps drawn again (at least once) for want of background (brainvq.background)
    unresolved_top_maps: int = 0  # still without background after MAX_REDRAWS rounds (kept)


SliceRequest = int | list[int] | torch.Tensor | None


def slice_conditions(num_samples: int, prior: Prior, slice_index: SliceRequest) -> torch.Tensor | None:
    """One slice index per sample: ``slice_index`` for all (an int), one per sample (a list or
    tensor of ``num_samples``), or, when None, spread over the middle 70 % of the volume (the slices
    a figure shows best; :func:`brainvq.evaluation.scores.matching_slices` gives the real split's spread)."""
    config = prior.config
    if not config.condition_on_slice:
        if slice_index is not None:
            raise RunError("--slice needs a prior trained with prior.condition_on_slice=true")
        return None
    if slice_index is None:
        spread = torch.linspace(0.15 * (config.num_slices - 1), 0.85 * (config.num_slices - 1), num_samples)
        return spread.round().long()
    slices = torch.as_tensor(slice_index, dtype=torch.long)
    slices = slices.expand(num_samples) if slices.dim() == 0 else slices
    if slices.shape != (num_samples,):
        raise RunError(f"--slice: {len(slices)} slice indices for {num_samples} samples")
    return slice_condition(slices.clone(), config.num_slices, "--slice")


def _level_conditions(
    num_samples: int, prior: Prior, top_prior: Prior | None, slice_index: SliceRequest
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Slice conditions for the (bottom) prior and the top prior; with two levels, ``--slice`` needs
    at least one of them to be slice-conditioned."""
    if top_prior is None:
        return slice_conditions(num_samples, prior, slice_index), None
    conditioned = [p for p in (prior, top_prior) if p.config.condition_on_slice]
    if slice_index is not None and not conditioned:
        raise RunError("--slice needs a prior trained with prior.condition_on_slice=true")
    bottom = slice_conditions(num_samples, prior, slice_index) if prior.config.condition_on_slice else None
    top = slice_conditions(num_samples, top_prior, slice_index) if top_prior.config.condition_on_slice else None
    return bottom, top


@torch.no_grad()
def sample(
    run: Any,
    num_samples: int = 16,
    *,
    seed: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    top_map_temperature: float | None = None,
    top_map_top_p: float | None = None,
    background_check: bool | None = None,
    slice_index: SliceRequest = None,
    batch_size: int = 16,
    sampler: str = "fast",
    device: torch.device | str | None = None,
    progress: bool = False,
) -> SampleResult:
    """Generate ``num_samples`` new slices with a loaded run (see :func:`brainvq.load_run`).

    ``temperature`` divides the logits (below 1: more typical, less varied codes) and defaults to
    the run's ``sample.temperature``; ``top_p`` (below 1: draw each code from its :func:`nucleus`
    only) to the run's ``sample.top_p``. In a two-level run they set the bottom map, and the top map
    follows them unless ``top_map_temperature`` / ``top_map_top_p`` (or the run's
    ``sample.top_map_*``) say otherwise (:func:`resolve_sampling`). Top maps with no background are
    drawn again unless ``background_check`` (default ``sample.top_map_background_check``) is False
    (:mod:`brainvq.sampling.background`). ``device`` defaults to the device the run was loaded on (a GPU when
    one was visible)."""
    prior = run.require_prior()
    device = resolve_device(device) if device is not None else run.device
    prior, vqvae = prior.to(device).eval(), run.vqvae.to(device).eval()
    two_levels = getattr(vqvae, "num_levels", 1) == 2
    how = resolve_sampling(
        run.config.sample, 2 if two_levels else 1, temperature, top_p, top_map_temperature, top_map_top_p,
        background_check,
    )  # fmt: skip
    top_prior = run.require_top_prior().to(device).eval() if two_levels else None
    condition, top_condition = _level_conditions(num_samples, prior, top_prior, slice_index)
    generator = torch.Generator().manual_seed(seed)
    options: dict[str, Any] = dict(sampler=sampler, batch_size=batch_size, device=device, progress=progress)
    started = time.perf_counter()
    top, top_maps = None, TopMaps(torch.empty(0), 0, 0)
    if top_prior is not None:  # the top map first, with global context
        assert how.top_map_temperature is not None and how.top_map_top_p is not None  # set for two levels
        background = run_background(run) if how.background_check else None
        how = how._replace(background_check=background is not None)  # what was done, for the record
        top_maps = draw_top_maps(
            top_prior, num_samples, run.top_code_shape, background, generator=generator, condition=top_condition,
            temperature=how.top_map_temperature, top_p=how.top_map_top_p, **options,
        )  # fmt: skip
        top = top_maps.codes
    codes = sample_codes(
        prior, num_samples, run.code_shape, generator=generator, condition=condition, context=top,
        temperature=how.temperature, top_p=how.top_p, **options,
    )  # fmt: skip
    sampled = time.perf_counter()
    images = decode_in_batches(vqvae, codes, top, batch_size, device)
    finished = time.perf_counter()
    return SampleResult(
        top_codes=top,
        codes=codes,
        images=images,
        slices=next((c.tolist() for c in (condition, top_condition) if c is not None), None),
        seconds=finished - started,
        sampling_seconds=sampled - started,
        decoding_seconds=finished - sampled,
        sampler=sampler,
        seed=seed,
        sampling=how,
        redrawn_top_maps=top_maps.redrawn,
        unresolved_top_maps=top_maps.unresolved,
    )
