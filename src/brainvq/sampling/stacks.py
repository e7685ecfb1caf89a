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

A chain of top maps forgets where in the brain it is, and one pulled hard toward what each index looks
like (``guidance`` 1, a product with the independent top prior) loses the subjects' variety: every stack
comes out the same typical brain. So slice 0's top map is drawn by the independent top prior exactly as
a single slice's (``sample.stack_first_map``), stacks start as varied as single slices; each later
slice's map is the best of a few candidates drawn from the stack prior given the same previous map, the
one that looks most like its index rather than its neighbours' (a :class:`Selection`,
``sample.stack_candidates`` and ``sample.stack_rivals``); and the guidance is light (0.5)
(docs/experiments/2026-12-07-stack-variety.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from brainvq.codes import decode_in_batches, stack_context
from brainvq.devices import resolve_device
from brainvq.errors import RunError
from brainvq.models.priors import Prior
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
    candidates: int = 1  # draws of each slice's top map, of which one was kept (Selection)
    rivals: tuple[int, ...] = ()  # the index offsets the kept candidate's own index was weighed against
    first_map: str = "stack"  # which prior drew slice 0's top map (top, stack)


class Selection(NamedTuple):
    """Best of ``candidates``: a slice's top map is drawn that many times given the same previous map,
    and one candidate is kept, by the independent top prior ``prior`` given slice indices. With no
    ``rivals``, the likeliest at the slice's own index k; with rivals (index offsets, e.g. (-4, -2, 2, 4)),
    the one whose index k is likeliest against indices k + offset (the posterior of k among them, from the
    whole map's log-likelihoods): that favours maps that look like slice k rather than typical maps."""

    prior: Prior
    candidates: int
    rivals: tuple[int, ...] = ()

    @torch.no_grad()
    def pick(self, maps: torch.Tensor, index: int) -> torch.Tensor:
        """The kept candidate of each stack: ``maps`` (N * candidates, h, w), a stack's candidates next
        to each other, -> (N, h, w)."""
        own = self.log_likelihood(maps, index)
        num_slices = int(self.prior.config.num_slices)
        others = [
            self.log_likelihood(maps, index + offset) for offset in self.rivals if 0 <= index + offset < num_slices
        ]
        score = own - torch.logsumexp(torch.stack([own, *others]), 0) if others else own  # (N*M,)
        per_stack = score.view(-1, self.candidates)  # (N*M,) -> (N, M)
        grouped = maps.view(per_stack.shape[0], self.candidates, *maps.shape[1:])  # -> (N, M, h, w)
        return grouped[torch.arange(len(grouped)), per_stack.argmax(1)]

    def log_likelihood(self, maps: torch.Tensor, index: int) -> torch.Tensor:
        """(B,) each map's log-likelihood in nats under the prior given slice ``index``."""
        condition = (
            torch.full((len(maps),), index, dtype=torch.long) if self.prior.config.condition_on_slice else None
        )
        device = next(self.prior.parameters()).device
        logits = self.prior(maps.to(device), condition.to(device) if condition is not None else None)
        return -F.cross_entropy(logits.float(), maps.to(device), reduction="none").sum((1, 2)).cpu()


@torch.no_grad()
def draw_stack_top_maps(
    stack_prior: Any,
    num_stacks: int,
    num_slices: int,
    shape: tuple[int, int],
    *,
    generator: torch.Generator,
    background: Background | None = None,
    first: torch.Tensor | None = None,
    selection: Selection | None = None,
    **options: Any,
) -> TopMaps:
    """Top maps (N, S, h, w): slice 0 given "no previous slice" (or ``first`` (N, h, w), drawn
    elsewhere), slice k given slice k-1's map (or the maps of its ``context_slices``:
    :func:`brainvq.codes.stack_context`). With a ``background`` reference, a slice's map with no
    background around the head is drawn again given the same previous map
    (:func:`brainvq.sampling.maps.draw_top_maps`) before the next slice follows it, so one bad map
    cannot carry through the stack. With a ``selection``, each slice's map is the best of its
    candidates (:class:`Selection`). ``options`` go to :func:`sample_codes` (temperature, top_p, sampler,
    device, guide); the batch is every candidate of every stack."""
    config = stack_prior.config
    none = torch.full((num_stacks, *shape), int(config.context_num_embeddings) - 1)  # "no previous slice"
    candidates = selection.candidates if selection is not None else 1
    redraws = redraw_generator(generator)  # one stream for all the slices' redraws
    maps, redrawn, unresolved = [] if first is None else [first], 0, 0
    for index in range(len(maps), num_slices):
        count = num_stacks * candidates
        condition = torch.full((count,), index, dtype=torch.long) if config.condition_on_slice else None
        previous = [maps[k] if k is not None else none for k in stack_context(index, config.context_slices)]
        given = torch.stack(previous, 1) if len(previous) > 1 else previous[0]  # M x (N, h, w) -> (N, [M,] h, w)
        given = given.repeat_interleave(candidates, 0)  # -> (N * candidates, [M,] h, w), a stack's side by side
        drawn = draw_top_maps(stack_prior, count, shape, background, generator=generator, condition=condition,
                              context=given, redraws=redraws, **{**options, "batch_size": count})  # fmt: skip
        maps.append(selection.pick(drawn.codes, index) if selection is not None else drawn.codes)
        redrawn, unresolved = redrawn + drawn.redrawn, unresolved + drawn.unresolved
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
    candidates: int | None = None,
    first_map: str | None = None,
    rivals: tuple[int, ...] | None = None,
) -> StackResult:
    """Generate ``num_stacks`` stacks of the run's slice count with a loaded two-level run that has a
    stack prior. The temperatures default to the run's ``sample`` settings, as for single slices (the top
    maps' to ``sample.stack_top_map_temperature``, the stack prior's own, when set), and
    ``coupling`` to ``sample.stack_coupling``: how the bottom-map draws of a stack's slices go together
    (each slice is still an exact draw of its own; only how the slices go together changes). A slice's top map with
    no background is drawn again unless ``background_check`` (default ``sample.top_map_background_check``)
    is False, as for single slices. ``guidance`` (default ``sample.stack_guidance``) above 0 draws the top
    maps from the stack prior times the independent top prior to that power (:class:`Guide`), which
    pulls each slice toward what its index looks like. ``candidates`` (default ``sample.stack_candidates``)
    above 1 keeps the best of that many draws of each slice's top map (:class:`Selection`);
    ``first_map`` (default ``sample.stack_first_map``) ``top`` draws slice 0's top map with the
    independent top prior as for a single slice (the top-map temperature the run's single slices use),
    ``stack`` with the stack prior given "no previous slice"."""
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
    candidates = run.config.sample.stack_candidates if candidates is None else candidates
    first_map = run.config.sample.stack_first_map if first_map is None else first_map
    if candidates < 1:
        raise RunError(f"--candidates must be 1 or more, got {candidates}")
    if first_map not in ("top", "stack"):
        raise RunError(f"first_map must be 'top' or 'stack', got {first_map!r}")
    top_prior = run.require_top_prior().to(device).eval()
    guide = Guide(top_prior, guidance) if guidance > 0 else None
    rivals = tuple(run.config.sample.stack_rivals) if rivals is None else tuple(rivals)
    rivals = rivals if candidates > 1 else ()  # what was done, for the record
    selection = Selection(top_prior, candidates, rivals) if candidates > 1 else None
    num_slices = int(stack_prior.config.num_slices)
    generator = torch.Generator().manual_seed(seed)
    options: dict[str, Any] = dict(sampler=sampler, device=device, progress=progress)
    started = time.perf_counter()
    first = None
    if first_map == "top":  # slice 0 exactly as a single slice's top map
        single = resolve_sampling(run.config.sample, 2, temperature, None, None, None, background_check)
        condition = torch.zeros(num_stacks, dtype=torch.long) if top_prior.config.condition_on_slice else None
        first = draw_top_maps(top_prior, num_stacks, run.top_code_shape, background, generator=generator,
                              condition=condition, temperature=single.top_map_temperature, top_p=single.top_map_top_p,
                              batch_size=num_stacks, **options).codes  # fmt: skip
    top_maps = draw_stack_top_maps(stack_prior, num_stacks, num_slices, run.top_code_shape, generator=generator,
                                   background=background, first=first, selection=selection,
                                   temperature=how.top_map_temperature, top_p=how.top_map_top_p, guide=guide,
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
        candidates=candidates,
        rivals=rivals,
        first_map=first_map,
        redrawn_top_maps=top_maps.redrawn,
        unresolved_top_maps=top_maps.unresolved,
    )
