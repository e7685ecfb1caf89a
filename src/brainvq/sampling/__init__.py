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
(:class:`KVSampler`); a guided draw (the stack prior times the top prior) steps both transformers as
one, their weights stacked side by side (:class:`brainvq.sampling.paired.PairedKVSampler`). For a two-level run the top map is drawn first (a map with no background
around the head is drawn again: :func:`draw_top_maps`, :mod:`brainvq.sampling.background`), then the
bottom map with the bottom prior conditioned on it, then both are decoded.

Draws use the Gumbel-max trick with noise from a seeded CPU ``torch.Generator``, so both
samplers consume identical random numbers.

Files: ``settings`` (temperatures, nuclei), ``draws`` (one draw), ``fast`` (the caches), ``paired`` (two
transformers stepped as one), ``maps``
(whole maps, redraws, top maps), ``slices`` (:func:`sample`), ``files`` (``brainvq sample`` on disk),
``background`` (the top maps' background check), ``stacks`` / ``stack_files`` (whole stacks).
"""

from brainvq.sampling.draws import draw, nucleus
from brainvq.sampling.fast import KVSampler, RowCache, fast_sampler, window_logits
from brainvq.sampling.files import draw_for_realism, realism_suffix, sample_run, sampling_suffix
from brainvq.sampling.maps import TopMaps, draw_top_maps, resample_codes, sample_codes
from brainvq.sampling.settings import Sampling, describe_sampling, resolve_sampling
from brainvq.sampling.slices import SampleResult, sample, slice_conditions

__all__ = [
    "KVSampler",
    "RowCache",
    "SampleResult",
    "Sampling",
    "TopMaps",
    "describe_sampling",
    "draw",
    "draw_for_realism",
    "draw_top_maps",
    "fast_sampler",
    "nucleus",
    "realism_suffix",
    "resample_codes",
    "resolve_sampling",
    "sample",
    "sample_codes",
    "sample_run",
    "sampling_suffix",
    "slice_conditions",
    "window_logits",
]
