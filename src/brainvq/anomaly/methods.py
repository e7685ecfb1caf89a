"""Every anomaly map brainvq makes, by name, from one pass of a batch of slices through a run.

Each method gives a pixel map (B, H, W), larger where the slice departs more from healthy anatomy:

* ``residual``: the VQ-VAE's reconstruction residual ``|x - recon|``, smoothed (the baseline of Baur et
  al. 2021);
* ``intensity``: the intensity's distance from healthy brains at that pixel and slice index, in their
  standard deviations, both signs (``|x - mean| / std``, :mod:`brainvq.anomaly.reference`): no model at
  all, the baseline a simple threshold gives;
* ``nll``: the bottom prior's ``-log2 p(code | codes before it)`` (bits), upsampled;
* ``nll_z``: the same, as a z-score against healthy brains at that position and slice (negative values,
  less surprising than usual, count as 0), so always-surprising edges and CSF stop dominating;
* ``top_z``: the top prior's z-scored NLL (two-level runs): an unlikely top code flags a region, and the
  top prior (a transformer) sees the whole map;
* ``top_z_both_orders`` / ``top_z_both_orders_max`` (the default): the top map's z-scores from the
  raster order and from the reversed order (a second top prior, ``train-prior --level top-reversed``),
  combined by the mean or the maximum, so the first rows of a lesion are not judged blind;
* ``levels_z``: the mean of ``nll_z`` and the top map's z-score (both orders where there are two);
* ``healed``: the codes ``levels_z`` flags (above :data:`FLAG_Z` at the bottom grid, one code of margin)
  are redrawn from the bottom prior :data:`REDRAWS` times, and each pixel scores its distance from the
  healed images' mean in units of their spread (``|x - mean| / (std + 0.05)``), inside the redrawn region.

Every map is then post-processed alike (:func:`finish`): median-filtered (5 x 5) and restricted to the
brain eroded by 3 pixels, as Baur et al. did. :func:`segment` turns a map into a lesion mask at a
threshold and drops components under :data:`MIN_COMPONENT` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from brainvq.anomaly.likelihood import (
    _condition,
    code_nll_bits,
    decode,
    encode,
    reversed_top_nll_bits,
    top_nll_bits,
)
from brainvq.anomaly.maps import gaussian_blur
from brainvq.anomaly.reference import HealthyReference
from brainvq.errors import RunError
from brainvq.runs import LoadedRun
from brainvq.sampling.maps import resample_codes

METHODS = ("residual", "intensity", "nll", "nll_z", "top_z", "top_z_both_orders", "top_z_both_orders_max",
           "levels_z", "healed")  # fmt: skip
DEFAULT_METHOD = "top_z_both_orders_max"  # measured best: docs/experiments/2026-12-06-anomaly-methods.md
FALLBACKS = ("top_z", "nll_z")  # runs without the reversed top prior, then one-level runs
COMBINATION_RULES = ("mean", "max")
FLAG_Z = 2.0
REDRAWS = 4
HEALED_SPREAD_FLOOR = 0.05
MEDIAN_SIZE = 5
BRAIN_EROSION = 3
MIN_COMPONENT = 8


@dataclass
class Pass:
    """One batch through the run: images (B, 1, H, W), their slice indices and what the models say."""

    images: torch.Tensor
    slices: torch.Tensor | None
    codes: torch.Tensor  # (B, h, w)
    recon: torch.Tensor  # (B, 1, H, W)
    top: torch.Tensor | None  # (B, h/t, w/t)
    nll: torch.Tensor  # (B, h, w) bits
    top_nll: torch.Tensor | None
    top_nll_reversed: torch.Tensor | None


def available(run: LoadedRun) -> tuple[str, ...]:
    """The methods this run can make (top-map methods need two levels; both orders the reversed prior)."""
    names = list(METHODS)
    if run.levels == 1 or run.top_prior is None:  # levels_z would be nll_z
        names = [m for m in names if not m.startswith("top_") and m != "levels_z"]
    if run.top_reversed_prior is None:
        names = [m for m in names if "both_orders" not in m]
    return tuple(names)


def chosen_method(run: LoadedRun) -> str:
    """:data:`DEFAULT_METHOD` where the run can make it, else the best one it can: ``top_z`` without the
    reversed-order top prior, ``nll_z`` for one-level runs."""
    names = available(run)
    return next(m for m in (DEFAULT_METHOD, *FALLBACKS) if m in names)


def resolve_methods(run: LoadedRun, methods: list[str] | None) -> list[str]:
    """The methods to make, the chosen one first: by default it and the two baselines; ``["all"]``
    every method the run can make; else the named ones, checked."""
    if not methods:
        return [chosen_method(run), "residual", "intensity"]
    if methods == ["all"]:
        return [chosen_method(run), *[m for m in available(run) if m != chosen_method(run)]]
    return check_methods(run, list(dict.fromkeys(methods)))


def check_methods(run: LoadedRun, methods: list[str]) -> list[str]:
    """``methods`` if this run can make them all, else a RunError naming the first it cannot."""
    for method in methods:
        if method not in METHODS:
            raise RunError(f"unknown anomaly method {method!r}; choose from {', '.join(METHODS)}")
        if method not in available(run):
            why = "a reversed-order top prior (`brainvq train-prior --level top-reversed`)" if "both" in method \
                else "a two-level run with a trained top prior"  # fmt: skip
            raise RunError(f"{run.root.root}: anomaly method {method!r} needs {why}")
    return methods


@torch.no_grad()
def analyse(run: LoadedRun, images: torch.Tensor, slices: torch.Tensor | None, need_top: bool = True) -> Pass:
    encoded = encode(run, images)
    nll = code_nll_bits(run, encoded.codes, slices, encoded.top)
    top_nll = reversed_nll = None
    if need_top and encoded.top is not None and run.top_prior is not None:
        top_nll = top_nll_bits(run, encoded.top, slices)
        if run.top_reversed_prior is not None:
            reversed_nll = reversed_top_nll_bits(run, encoded.top, slices)
    return Pass(images, slices, encoded.codes, encoded.recon, encoded.top, nll, top_nll, reversed_nll)


def combine(maps: list[torch.Tensor], rule: str) -> torch.Tensor:
    """One map from several of the same shape: their ``mean`` or their ``max``."""
    if rule not in COMBINATION_RULES:
        raise ValueError(f"combination rule must be one of {COMBINATION_RULES}, got {rule!r}")
    stacked = torch.stack(maps)  # (M, B, ...) methods first
    return stacked.mean(0) if rule == "mean" else stacked.amax(0)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Code-grid maps (B, h, w) to pixels (B, H, W), bilinear."""
    x = maps.float().unsqueeze(1)  # (B, h, w) -> (B, 1, h, w)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False).squeeze(1)


def _top_z(passed: Pass, reference: HealthyReference, rule: str | None) -> torch.Tensor:
    """The top map's positive z-scores (B, h/t, w/t); both orders combined by ``rule`` when given."""
    assert passed.top_nll is not None
    forward = reference.nll_z("top", passed.top_nll, passed.slices).clamp_min(0)
    if rule is None:
        return forward
    assert passed.top_nll_reversed is not None
    backward = reference.nll_z("top_reversed", passed.top_nll_reversed, passed.slices).clamp_min(0)
    return combine([forward, backward], rule)


def level_scores(passed: Pass, reference: HealthyReference) -> torch.Tensor:
    """``levels_z`` on the bottom code grid (B, h, w): bottom and top z-scores averaged."""
    bottom = reference.nll_z("bottom", passed.nll, passed.slices).clamp_min(0)
    if passed.top_nll is None:
        return bottom
    rule = "mean" if passed.top_nll_reversed is not None else None
    top = upsample(_top_z(passed, reference, rule), tuple(bottom.shape[1:]))  # type: ignore[arg-type]
    return combine([bottom, top], "mean")


def raw_map(run: LoadedRun, method: str, passed: Pass, reference: HealthyReference, *, seed: int) -> torch.Tensor:
    """One method's map (B, H, W) before post-processing."""
    size = tuple(passed.images.shape[-2:])
    if method == "residual":
        return gaussian_blur((passed.images[:, 0] - passed.recon[:, 0]).abs())
    if method == "intensity":
        return gaussian_blur(reference.intensity_z(passed.images, passed.slices).abs())
    if method == "nll":
        return upsample(passed.nll, size)  # type: ignore[arg-type]
    if method == "nll_z":
        return upsample(reference.nll_z("bottom", passed.nll, passed.slices).clamp_min(0), size)  # type: ignore[arg-type]
    if method in ("top_z", "top_z_both_orders", "top_z_both_orders_max"):
        rule = {"top_z": None, "top_z_both_orders": "mean", "top_z_both_orders_max": "max"}[method]
        return upsample(_top_z(passed, reference, rule), size)  # type: ignore[arg-type]
    if method == "levels_z":
        return upsample(level_scores(passed, reference), size)  # type: ignore[arg-type]
    if method == "healed":
        return healed_map(run, passed, level_scores(passed, reference) > FLAG_Z, seed=seed)
    raise RunError(f"unknown anomaly method {method!r}; choose from {', '.join(METHODS)}")


@torch.no_grad()
def healed_map(
    run: LoadedRun, passed: Pass, flagged: torch.Tensor, *, seed: int, redraws: int = REDRAWS
) -> torch.Tensor:
    """Redraw the ``flagged`` codes (B, h, w) ``redraws`` times; the pixels' distance (B, H, W) from the
    healed images' mean in units of their spread, inside the redrawn region."""
    flagged = F.max_pool2d(flagged.float().unsqueeze(1), 3, 1, 1).squeeze(1) > 0  # one code of margin
    condition = _condition(run, passed.slices)
    healed = []
    for draw in range(redraws):
        codes = resample_codes(run.require_prior(), passed.codes, flagged, generator=seed * 1000 + draw,
                               condition=condition, context=passed.top, device=run.device)  # fmt: skip
        healed.append(decode(run, codes, passed.top)[:, 0])
    stack = torch.stack(healed)  # (R, B, H, W) the redraws first
    distance = (passed.images[:, 0] - stack.mean(0)).abs() / (stack.std(0) + HEALED_SPREAD_FLOOR)
    region = F.interpolate(flagged.float().unsqueeze(1), size=passed.images.shape[-2:], mode="nearest").squeeze(1)
    return gaussian_blur(distance * region)


def eroded(brain: torch.Tensor, pixels: int = BRAIN_EROSION) -> torch.Tensor:
    """The brain masks (B, H, W) bool, eroded by ``pixels``."""
    outside = (~brain).float().unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    grown = F.max_pool2d(outside, 2 * pixels + 1, 1, pixels).squeeze(1)
    return grown == 0


def finish(maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Post-processing: a 5 x 5 median filter, then 0 outside the eroded brain (B, H, W)."""
    from scipy.ndimage import median_filter

    filtered = median_filter(maps.float().numpy(), size=(1, MEDIAN_SIZE, MEDIAN_SIZE), mode="nearest")
    return torch.from_numpy(filtered) * eroded(brain).float()


def segment(maps: np.ndarray, threshold: float, min_size: int = MIN_COMPONENT) -> np.ndarray:
    """Lesion masks (B, H, W) bool: the map at or above ``threshold``, without components (8-connected,
    per slice) smaller than ``min_size`` pixels."""
    from scipy.ndimage import label

    masks = maps >= threshold
    for k in range(len(masks)):
        labelled, count = label(masks[k], structure=np.ones((3, 3)))
        if count:
            sizes = np.bincount(labelled.ravel())
            small = sizes < min_size
            small[0] = False
            masks[k][small[labelled]] = False
    return masks


def method_maps(
    run: LoadedRun,
    reference: HealthyReference,
    images: torch.Tensor,
    slices: torch.Tensor | None,
    brain: torch.Tensor,
    methods: list[str],
    *,
    seed: int = 0,
    raw: bool = False,
) -> dict[str, torch.Tensor]:
    """Every method's post-processed map (B, H, W) for images (B, 1, H, W) with brain masks (B, H, W)."""
    needs_top = any(m.startswith("top_") or m in ("levels_z", "healed") for m in methods)
    passed = analyse(run, images, slices, need_top=needs_top)
    maps = {method: raw_map(run, method, passed, reference, seed=seed) for method in methods}
    return maps if raw else {method: finish(value, brain) for method, value in maps.items()}
