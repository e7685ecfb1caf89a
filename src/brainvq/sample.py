"""Sampling new brains: ancestral sampling of code maps from the prior, then decoding.

Two samplers draw the same maps for the same model, seed and temperature:

* ``naive`` runs the whole prior over the whole map once per position (h*w full passes).
* ``fast`` (default) computes, for each position, only what that position's logits depend on.
  Every prior stage is causal with a known radius r: its output at (i, j) depends only on rows
  i-r..i and columns j-r..j+r of its input. Once row i is sampled, each stage's activations on
  row i are final, so :class:`RowCache` stores them (one full-width pass per row); the logits at
  (i, j) then need, per stage, row i alone over the columns later stages still read, with the rows
  above read from the cache. The map's real borders stay real borders, so the result equals the
  full pass up to float rounding (compare Ramachandran et al. 2017, "Fast Generation for
  Convolutional Autoregressive Models", which caches per layer in the same spirit).

The transformer prior (the top map of a two-level run) is sampled with a key/value cache
(:class:`KVSampler`): each new position attends to the cached keys and values of the positions
before it, one position of work per code instead of a full pass. For a two-level run the top map is
drawn first (a map with no background around the head is drawn again: :func:`draw_top_maps`,
:mod:`brainvq.background`), then the bottom map with the bottom prior conditioned on it, then both
are decoded.

Draws use the Gumbel-max trick with noise from a seeded CPU ``torch.Generator``, so both
samplers consume identical random numbers and a draw only changes if float rounding moves the
top two perturbed logits past each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from brainvq.background import Background, run_background
from brainvq.codes import decode_in_batches, slice_condition
from brainvq.config import SampleConfig, sampling_problem
from brainvq.devices import resolve_device
from brainvq.errors import RunError
from brainvq.models.pixelcnn import Extra, StagedPrior, State
from brainvq.models.priors import Prior
from brainvq.models.transformer import TransformerPrior


class Sampling(NamedTuple):
    """How codes are drawn: ``temperature`` and ``top_p`` for the bottom (or only) map, and
    ``top_map_temperature`` and ``top_map_top_p`` for the top map of a two-level run, and
    ``background_check``: whether top maps with no background are drawn again
    (:mod:`brainvq.background`). The last three are None for one level."""

    temperature: float
    top_p: float
    top_map_temperature: float | None = None
    top_map_top_p: float | None = None
    background_check: bool | None = None

    def top_map_differs(self) -> tuple[bool, bool]:
        """Whether the top map's temperature and nucleus differ from the bottom map's (never for one
        level): what titles and file names mention."""
        return (
            self.top_map_temperature not in (None, self.temperature),
            self.top_map_top_p not in (None, self.top_p),
        )


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


def describe_sampling(sampling: Sampling) -> str:
    """``T=1, top-p 0.9`` (the nucleus only below 1), then ``; top map ...`` for top-map settings
    that differ from the bottom's: for titles and legends."""
    text = f"T={sampling.temperature:g}" + (f", top-p {sampling.top_p:g}" if sampling.top_p < 1 else "")
    temperature_differs, top_p_differs = sampling.top_map_differs()
    top = [f"T={sampling.top_map_temperature:g}"] if temperature_differs else []
    top += [f"top-p {sampling.top_map_top_p:g}"] if top_p_differs else []
    top += ["no background check"] if sampling.background_check is False else []
    return text + (f"; top map {', '.join(top)}" if top else "")


def resolve_sampling(
    config: SampleConfig,
    levels: int,
    temperature: float | None = None,
    top_p: float | None = None,
    top_map_temperature: float | None = None,
    top_map_top_p: float | None = None,
    background_check: bool | None = None,
) -> Sampling:
    """The settings a draw uses: each given value, else the run's ``sample`` config. The top map's follow the bottom's unless set: given, or
    ``sample.top_map_temperature`` / ``sample.top_map_top_p`` in the config; ``background_check``
    defaults to ``sample.top_map_background_check``. All three are ignored in the config of a one-level
    run, and giving them for one is an error. Checks the ranges."""
    temperature = config.temperature if temperature is None else temperature
    top_p = config.top_p if top_p is None else top_p
    if levels == 2:
        top_map_temperature = next(
            v for v in (top_map_temperature, config.top_map_temperature, temperature) if v is not None
        )
        top_map_top_p = next(v for v in (top_map_top_p, config.top_map_top_p, top_p) if v is not None)
        background_check = config.top_map_background_check if background_check is None else background_check
    elif any(v is not None for v in (top_map_temperature, top_map_top_p, background_check)):
        raise RunError(
            "top_map_temperature, top_map_top_p and the background check need a two-level run (model.levels 2)"
        )
    sampling = Sampling(temperature, top_p, top_map_temperature, top_map_top_p, background_check)
    for name, value in sampling._asdict().items():
        if name == "background_check":
            continue
        problem = sampling_problem(name, value)
        if problem:
            raise RunError(f"{name} {problem}")
    return sampling


NUCLEUS_FIRST = 64  # how many of the most likely codes :func:`nucleus` sorts before it sorts them all


def nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` (B, K) with every code outside the nucleus set to -inf: the nucleus is the smallest
    set of most likely codes whose probabilities sum to at least ``top_p`` (nucleus or top-p
    sampling, Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"). It cuts the
    long tail of unlikely codes that an imperfect prior still gives mass to."""
    probs = torch.softmax(logits.float(), dim=1)
    num_codes = probs.shape[1]
    for largest in (min(NUCLEUS_FIRST, num_codes), num_codes):
        # a trained prior's nucleus is mostly a few codes: sort the largest first, all only if needed
        sorted_probs, order = probs.topk(largest, dim=1) if largest < num_codes else probs.sort(1, descending=True)
        total = sorted_probs.cumsum(dim=1)
        if largest == num_codes or bool((total[:, -1] >= top_p).all()):  # every nucleus lies inside
            break
    keep_sorted = total - sorted_probs < top_p  # the most likely code always stays
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(1, order, keep_sorted)
    return logits.float().masked_fill(~keep, float("-inf"))


def draw(logits: torch.Tensor, temperature: float, generator: torch.Generator, top_p: float = 1.0) -> torch.Tensor:
    """Sample one code per row of ``logits`` (B, K) from softmax(logits / temperature) (Gumbel-max),
    restricted to the :func:`nucleus` of probability ``top_p`` when it is below 1.

    Always draws (B, K) uniforms from ``generator`` so the random stream does not depend on values.
    """
    uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float32)
    uniform = uniform.clamp_(1e-20, 1.0 - 1e-7).to(logits.device)
    if temperature <= 0:
        return logits.argmax(1)
    scaled = logits.float() / temperature
    if top_p < 1.0:
        scaled = nucleus(scaled, top_p)
    gumbel = -torch.log(-torch.log(uniform))
    return (scaled + gumbel).argmax(1)


def _apply(state: State, fn: Callable[[torch.Tensor], torch.Tensor]) -> State:
    return (fn(state[0]), fn(state[1])) if isinstance(state, tuple) else fn(state)


def _crop(state: State, rows: slice, cols: slice) -> State:
    return _apply(state, lambda t: t[:, :, rows, cols])


def _extra_crop(extra: Extra, rows: slice, cols: slice) -> Extra:
    """The window of a stage's ``extra``: a per-position map is cropped, a per-map bias (B, C, 1, 1) kept."""
    if not isinstance(extra, torch.Tensor):
        return extra
    return extra[:, :, rows if extra.shape[2] > 1 else slice(None), cols if extra.shape[3] > 1 else slice(None)]


def window_logits(
    prior: StagedPrior,
    codes: torch.Tensor,
    i: int,
    j: int,
    condition: torch.Tensor | None,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (B, K) at (i, j), computed on the causal window around it without any cache (exact).

    A reference for :class:`RowCache` and a one-off query: it recomputes rows above ``i`` too.
    ``context`` holds the top codes of a two-level run.
    """
    width = codes.shape[2]
    radius = prior.receptive_radius
    extras = prior.extras(condition, context)
    top, left = max(0, i - radius), max(0, j - radius)
    state = prior.embed(codes[:, top : i + 1, left : min(width, j + radius + 1)], (top, left))
    row, col, remaining = i - top, j - left, radius
    for stage, extra in zip(prior.stages, extras, strict=True):
        height, breadth = _size(state)
        state = stage(state, _extra_crop(extra, slice(top, top + height), slice(left, left + breadth)))
        remaining -= int(stage.radius)  # type: ignore[arg-type]
        first_row, first_col = max(0, row - remaining), max(0, col - remaining)
        state = _crop(state, slice(first_row, row + 1), slice(first_col, col + remaining + 1))
        row, col = row - first_row, col - first_col
        top, left = top + first_row, left + first_col
    assert isinstance(state, torch.Tensor)
    return state[:, :, row, col]


def _size(state: State) -> tuple[int, int]:
    tensor = state[0] if isinstance(state, tuple) else state
    return int(tensor.shape[2]), int(tensor.shape[3])


class RowCache:
    """Exact incremental evaluation of a causal prior, one position at a time.

    Once row i is fully sampled, every stage's activations on row i are final; ``finish_row``
    computes them once, full width, and caches them. The logits at (i, j) then need, per stage,
    only row i over the few columns later stages still read, with the rows above taken from the
    cache: a strip of ``radius + 1`` rows per stage instead of the whole map.

    The cached rows and the stages' extras are stored channels-last (``memory_format``): a window of
    a few columns is then a few runs of contiguous memory instead of one per channel, which makes the
    small convolutions and additions of each step faster on a CPU (``benchmarks/sampling.py``).
    """

    memory_format = torch.channels_last

    def __init__(
        self,
        prior: StagedPrior,
        codes: torch.Tensor,
        condition: torch.Tensor | None,
        context: torch.Tensor | None = None,
    ) -> None:
        self.prior, self.codes = prior, codes
        self.extras = [  # each stage's bias and context, once for the whole map
            extra.contiguous(memory_format=self.memory_format) if isinstance(extra, torch.Tensor) else extra
            for extra in prior.extras(condition, context)
        ]
        self.width = codes.shape[2]
        self.radii = [int(stage.radius) for stage in prior.stages]  # type: ignore[arg-type]
        self.after = [sum(self.radii[index + 1 :]) for index in range(len(self.radii))]
        self.inputs: list[State | None] = [None] * len(self.radii)  # full-map input of each stage

    def _columns(self, reach: int, j: int | None) -> tuple[int, int]:
        return (0, self.width) if j is None else (max(0, j - reach), min(self.width, j + reach + 1))

    def _row(self, i: int, j: int | None) -> torch.Tensor:
        first, last = self._columns(sum(self.radii), j)
        current = self.prior.embed(self.codes[:, i : i + 1, first:last], (i, first))
        for index, stage in enumerate(self.prior.stages):
            if j is None:
                self._store(index, i, current)
            cached = self.inputs[index]
            above, start = max(0, i - self.radii[index]), i
            if cached is not None and above < i:
                rows = _crop(cached, slice(above, i), slice(first, last))
                if isinstance(rows, tuple):
                    assert isinstance(current, tuple)
                    current = (torch.cat([rows[0], current[0]], 2), torch.cat([rows[1], current[1]], 2))
                else:
                    current = torch.cat([rows, current], 2)  # type: ignore[list-item]
                start = above
            output = stage(current, _extra_crop(self.extras[index], slice(start, i + 1), slice(first, last)))
            new_first, new_last = self._columns(self.after[index], j)
            current = _crop(output, slice(-1, None), slice(new_first - first, new_last - first))
            first, last = new_first, new_last
        assert isinstance(current, torch.Tensor)
        return current

    def _store(self, index: int, i: int, row: State) -> None:
        if self.inputs[index] is None:
            self.inputs[index] = _apply(row, self._empty_map)
        cache = self.inputs[index]
        if isinstance(cache, tuple):
            assert isinstance(row, tuple)
            cache[0][:, :, i] = row[0][:, :, 0]
            cache[1][:, :, i] = row[1][:, :, 0]
        else:
            assert isinstance(cache, torch.Tensor) and isinstance(row, torch.Tensor)
            cache[:, :, i] = row[:, :, 0]

    def _empty_map(self, row: torch.Tensor) -> torch.Tensor:
        """Zeros for every row of the map, like ``row`` (B, C, 1, w), stored in ``memory_format``."""
        batch, channels, _, width = row.shape
        return row.new_zeros(batch, channels, self.codes.shape[1], width).contiguous(
            memory_format=self.memory_format
        )

    def logits(self, i: int, j: int) -> torch.Tensor:
        """Logits (B, K) at (i, j); rows above i must have been finished."""
        return self._row(i, j)[:, :, 0, 0]

    def finish_row(self, i: int) -> None:
        """Cache every stage's input on row i (call once row i is fully sampled)."""
        self._row(i, None)


class KVSampler:
    """Incremental evaluation of the transformer prior with a key/value cache, with the same
    ``logits(i, j)`` / ``finish_row(i)`` interface as :class:`RowCache`. Positions that were not asked
    for (kept codes, when completing or healing a map) are fed the next time logits are needed."""

    def __init__(self, prior: TransformerPrior, codes: torch.Tensor, condition: torch.Tensor | None) -> None:
        self.prior, self.codes, self.condition = prior, codes, condition
        self.width = codes.shape[2]
        self.cache = prior.new_cache()

    def logits(self, i: int, j: int) -> torch.Tensor:
        """Logits (B, K) at (i, j); every position before it must hold its final code."""
        flat = self.codes.view(self.codes.shape[0], -1)  # (B, h, w) -> (B, T), a view of the live map
        return self.prior.step(flat, i * self.width + j, self.cache, self.condition)

    def finish_row(self, i: int) -> None:
        """Nothing to do: keys and values are cached as positions are fed."""


def fast_sampler(
    prior: Prior, codes: torch.Tensor, condition: torch.Tensor | None, context: torch.Tensor | None
) -> RowCache | KVSampler:
    """The exact incremental sampler for ``prior``: a key/value cache for the transformer, the row
    cache for the PixelCNNs."""
    if isinstance(prior, TransformerPrior):
        if context is not None:
            raise ValueError("the transformer prior takes no context map")
        return KVSampler(prior, codes, condition)
    return RowCache(prior, codes, condition, context)


@torch.no_grad()
def sample_codes(
    prior: Prior,
    num_samples: int,
    shape: tuple[int, int],
    *,
    generator: torch.Generator | int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    condition: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
    sampler: str = "fast",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling in raster order from an all-zero map; returns codes (N, h, w) int64.

    ``generator`` is a CPU ``torch.Generator`` or a seed. ``condition`` holds one slice index per
    sample when the prior is conditioned; ``context`` the top codes (N, h/t, w/t) for the bottom
    prior of a two-level run. Same prior, seed, temperature, batch size and device give the same
    maps, with either sampler.
    """
    codes = torch.zeros(num_samples, *shape, dtype=torch.long)
    everywhere = torch.ones(num_samples, *shape, dtype=torch.bool)
    return resample_codes(
        prior, codes, everywhere, generator=generator, temperature=temperature, top_p=top_p,
        condition=condition, context=context, sampler=sampler, batch_size=batch_size, device=device, progress=progress,
    )  # fmt: skip


@torch.no_grad()
def resample_codes(
    prior: Prior,
    codes: torch.Tensor,
    resample: torch.Tensor,
    *,
    generator: torch.Generator | int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    condition: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
    sampler: str = "fast",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling of the positions where ``resample`` (N, h, w) is True, in raster order,
    given every other code of ``codes`` (N, h, w); the rest are kept exactly. Returns new codes.

    Completion (keep the first rows) and anomaly "healing" (redraw unlikely codes) are this with
    different masks; plain sampling is this with every position. Positions that no map of a batch
    resamples are skipped by both samplers alike, so fast and naive still draw the same codes.
    """
    if sampler not in ("fast", "naive"):
        raise ValueError(f"sampler must be 'fast' or 'naive', got {sampler!r}")
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    device = torch.device(device)
    prior.eval()
    num_maps, height, width = codes.shape
    out = []
    bar = tqdm(
        total=int(resample.sum()),
        desc=f"sampling ({sampler})",
        disable=not progress,
        unit="code",
        unit_scale=True,
        mininterval=1.0,
    )
    for start in range(0, num_maps, batch_size):
        batch = codes[start : start + batch_size].to(device=device, dtype=torch.long).clone()
        redraw = resample[start : start + batch_size].to(device)
        cond = condition[start : start + batch_size].to(device) if condition is not None else None
        top = (
            context[start : start + batch_size].to(device=device, dtype=torch.long)
            if context is not None
            else None
        )
        cache = fast_sampler(prior, batch, cond, top) if sampler == "fast" else None
        for i in range(height):
            for j in range(width):
                if not bool(redraw[:, i, j].any()):
                    continue
                logits = cache.logits(i, j) if cache is not None else prior(batch, cond, top)[:, :, i, j]
                drawn = draw(logits, temperature, generator, top_p)
                batch[:, i, j] = torch.where(redraw[:, i, j], drawn, batch[:, i, j])
                bar.update(int(redraw[:, i, j].sum()))
            if cache is not None:
                cache.finish_row(i)
        out.append(batch.cpu())
    bar.close()
    return torch.cat(out)


MAX_REDRAWS = 10  # rounds of redrawing top maps with no background before keeping them
REDRAW_STREAM = 0x1E3779B97F4A7C15  # offsets the redraws' seed from the draw's: a stream of their own


class TopMaps(NamedTuple):
    """The top maps of a two-level draw, and how many were drawn again for want of background."""

    codes: torch.Tensor  # (N, h/t, w/t) int64
    redrawn: int  # maps drawn again at least once
    unresolved: int  # still flagged after MAX_REDRAWS rounds (kept as drawn last)


@torch.no_grad()
def draw_top_maps(
    top_prior: Prior,
    num_samples: int,
    shape: tuple[int, int],
    background: Background | None,
    *,
    generator: torch.Generator,
    condition: torch.Tensor | None = None,
    **options: Any,
) -> TopMaps:
    """Draw ``num_samples`` top maps; with a ``background`` reference, draw the maps it flags again
    (each keeps its slice condition), round after round, until none is flagged or ``MAX_REDRAWS``
    rounds have passed. ``options`` go to :func:`sample_codes` (temperature, top_p, sampler, ...).

    The redraws take their noise from a generator of their own, seeded from ``generator``'s seed, so
    ``generator`` (which the bottom maps use next) runs on as without the check: the check changes the
    flagged samples and nothing else, and a seed still gives the same maps."""
    codes = sample_codes(top_prior, num_samples, shape, generator=generator, condition=condition, **options)
    if background is None:
        return TopMaps(codes, 0, 0)
    redraws = torch.Generator().manual_seed((generator.initial_seed() + REDRAW_STREAM) % 2**63)
    options["generator"] = redraws
    flagged = torch.nonzero(background.flagged(codes)).flatten()
    redrawn = len(flagged)
    for _ in range(MAX_REDRAWS):
        if len(flagged) == 0:
            break
        again = condition[flagged] if condition is not None else None
        codes[flagged] = sample_codes(top_prior, len(flagged), shape, condition=again, **options)
        flagged = flagged[background.flagged(codes[flagged])]
    return TopMaps(codes, redrawn, len(flagged))


SliceRequest = int | list[int] | torch.Tensor | None


def slice_conditions(num_samples: int, prior: Prior, slice_index: SliceRequest) -> torch.Tensor | None:
    """One slice index per sample: ``slice_index`` for all (an int), one per sample (a list or
    tensor of ``num_samples``), or, when None, spread over the middle 70 % of the volume (the slices
    a figure shows best; :func:`brainvq.realism.matching_slices` gives the real split's spread)."""
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
    (:mod:`brainvq.background`). ``device`` defaults to the device the run was loaded on (a GPU when
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
