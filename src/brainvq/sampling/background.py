"""Top maps with no background: the ring check that two-level sampling uses to find and redraw them.

Real OASIS slices are black around the head, so the outer ring of every real top map (its outer
cells, :data:`RING_FRACTION` of its side) holds the same few background codes: each encoded training top map agrees
with the per-position commonest code on a share of its ring between the split's minimum and 1. A
top prior sampled from its full distribution now and then draws a map whose ring is far below
that minimum. Decoded, such a map is brain texture to the frame's edge (a brain fraction of
0.5-1.0 where real slices stay below 0.3); the README's "Two levels" section counts them and what
they cost the tissue error. :func:`brainvq.sampling.sample` draws those maps again (rejection sampling
on a check that real maps always pass), unless ``sample.top_map_background_check`` is false or
``--no-background-check`` is given.

The reference is the run's own encoded training split (``RUN/codes/train.pt``): what the top
prior learned from, never the split that scores the samples.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import torch

from brainvq.codes import CodeMaps
from brainvq.errors import RunError

RING_FRACTION = 3 / 16  # of the map's side: 3 cells of a 16x16 top map, 48 pixels of a 256-pixel slice
MARGIN = 0.05  # how far below the real minimum a drawn map must fall to be flagged


def ring_mask(shape: tuple[int, int], width: int) -> torch.Tensor:
    """True on the outer ``width`` cells of an (h, w) map (all of it when the map is that small)."""
    ring = torch.ones(shape, dtype=torch.bool)
    ring[width : shape[0] - width, width : shape[1] - width] = False
    return ring


def ring_agreement(maps: torch.Tensor, mode: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """Per map (N,): the share of ring cells whose code is the real maps' commonest there."""
    return (maps == mode)[:, ring].float().mean(1)  # (N, h, w) -> (N, ring cells) -> (N,)


class Background(NamedTuple):
    """What a real top map's ring looks like, from a split's encoded top maps."""

    mode: torch.Tensor  # (h, w) int64: the commonest real code at each position
    ring: torch.Tensor  # (h, w) bool: the outer cells
    real_share: torch.Tensor  # (N,): each real map's ring agreement
    limit: float  # a drawn map below this has no background

    @classmethod
    def of(cls, real_top: torch.Tensor, width: int | None = None, margin: float = MARGIN) -> Background:
        """The reference of real top maps (N, h, w): a ring ``width`` cells wide (default
        :data:`RING_FRACTION` of the shorter side, at least 1); ``limit`` is the maps' lowest share
        less ``margin``."""
        real_top = real_top.long()
        mode = real_top.mode(0).values  # (N, h, w) -> (h, w)
        side = min(mode.shape[0], mode.shape[1])
        width = max(1, round(side * RING_FRACTION)) if width is None else width
        ring = ring_mask((mode.shape[0], mode.shape[1]), width)
        share = ring_agreement(real_top, mode, ring)
        return cls(mode, ring, share, float(share.min()) - margin)

    def flagged(self, maps: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the maps (N, h, w) with no background."""
        if maps.shape[1:] != self.mode.shape:
            raise RunError(f"top maps of shape {tuple(maps.shape[1:])}, the reference {tuple(self.mode.shape)}")
        return ring_agreement(maps.long().cpu(), self.mode, self.ring) < self.limit


def run_background(run: Any) -> Background | None:
    """The reference of a loaded two-level run (:func:`brainvq.load_run`), from its encoded training
    split; None, with a warning, when that file is missing or was made by another VQ-VAE checkpoint
    (then nothing is redrawn). Kept in memory while the file is unchanged, so repeated draws from
    one run read it once."""
    path = run.root.code_file(run.config.data.train_split)
    try:
        reference = _training_reference(path, run.vqvae_hash, path.stat().st_mtime_ns if path.is_file() else None)
    except RunError as error:
        warnings.warn(f"no background check of the top maps: {error}", stacklevel=2)
        return None
    if reference is None:
        raise RunError(f"{path}: holds no top maps, but the run has two levels (run `brainvq encode --force`)")
    return reference


@lru_cache(maxsize=2)
def _training_reference(path: Path, vqvae_hash: str, modified: int | None) -> Background | None:
    """:func:`run_background`'s reference (None: the file has no top maps); ``modified`` (the
    file's mtime) keys the cache only."""
    codes = CodeMaps.load(path).check_made_by(vqvae_hash, path)
    return Background.of(codes.top_indices) if codes.top_indices is not None else None
