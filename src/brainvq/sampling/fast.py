"""The fast samplers: per-row activation caches for the PixelCNNs (:class:`RowCache`) and a key/value cache
for the transformer (:class:`KVSampler`); both give the logits the full pass would, position by position."""

from __future__ import annotations

from collections.abc import Callable

import torch

from brainvq.models.pixelcnn import Extra, StagedPrior, State
from brainvq.models.priors import Prior
from brainvq.models.transformer import TransformerPrior


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

    def __init__(
        self,
        prior: TransformerPrior,
        codes: torch.Tensor,
        condition: torch.Tensor | None,
        context: torch.Tensor | None = None,
    ) -> None:
        self.prior, self.codes, self.condition, self.context = prior, codes, condition, context
        self.width = codes.shape[2]
        self.cache = prior.new_cache()

    def logits(self, i: int, j: int) -> torch.Tensor:
        """Logits (B, K) at (i, j); every position before it must hold its final code."""
        flat = self.codes.view(self.codes.shape[0], -1)  # (B, h, w) -> (B, T), a view of the live map
        return self.prior.step(flat, i * self.width + j, self.cache, self.condition, self.context)

    def finish_row(self, i: int) -> None:
        """Nothing to do: keys and values are cached as positions are fed."""


def fast_sampler(
    prior: Prior, codes: torch.Tensor, condition: torch.Tensor | None, context: torch.Tensor | None
) -> RowCache | KVSampler:
    """The exact incremental sampler for ``prior``: a key/value cache for the transformer, the row
    cache for the PixelCNNs."""
    if isinstance(prior, TransformerPrior):
        return KVSampler(prior, codes, condition, context)
    return RowCache(prior, codes, condition, context)
