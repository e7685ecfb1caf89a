"""What the prior makes of a slice: each code's conditional probability (bits per code), for one level
or both, and completions of a slice's missing rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainvq.codes import decode_levels, reverse_order, slice_condition
from brainvq.devices import autocast_context, autocast_dtype, inference_precision
from brainvq.errors import RunError
from brainvq.runs import LoadedRun
from brainvq.sampling.maps import resample_codes

DEFAULT_QUANTILE = 0.02
SMOOTHING_SIGMA = 1.5
TOP_FRACTION = 0.01


@dataclass
class Healed:
    """One batch through the anomaly method."""

    images: torch.Tensor  # (B, 1, H, W) inputs
    codes: torch.Tensor  # (B, h, w) the inputs' codes
    healed_codes: torch.Tensor  # (B, h, w) after redrawing
    recon: torch.Tensor  # (B, 1, H, W) VQ-VAE reconstructions
    healed: torch.Tensor  # (B, 1, H, W) decoded healed codes
    redrawn: torch.Tensor  # (B, h, w) bool, codes redrawn
    nll_bits: torch.Tensor  # (B, h, w)
    prior_map: torch.Tensor  # (B, H, W) anomaly map of the prior method
    residual_map: torch.Tensor  # (B, H, W) the reconstruction-residual baseline


def _condition(run: LoadedRun, slices: torch.Tensor | None, prior_config: Any = None) -> torch.Tensor | None:
    prior_config = prior_config or run.config.prior
    if not prior_config.condition_on_slice:
        return None
    if slices is None:
        raise RunError("this prior is slice-conditioned: the images need slice indices (OASIS file names)")
    return slice_condition(slices, prior_config.num_slices, "images")


@dataclass
class Encoded:
    """Images through the VQ-VAE: bottom codes (B, h, w), reconstructions, top codes (two levels)."""

    codes: torch.Tensor
    recon: torch.Tensor
    top: torch.Tensor | None


@torch.no_grad()
def encode(run: LoadedRun, images: torch.Tensor) -> Encoded:
    """Codes and reconstructions (B, 1, H, W) of images in [0, 1]."""
    dtype = autocast_dtype(inference_precision(run.device))
    with autocast_context(run.device, dtype):
        output = run.vqvae(images.to(run.device))
    top = output.top_indices.cpu() if output.top_indices is not None else None
    return Encoded(output.indices.cpu(), output.recon.float().clamp(0, 1).cpu(), top)


def _nll_bits(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits.float(), dim=1)  # (B, K, h, w)
    picked = log_probs.gather(1, codes.unsqueeze(1)).squeeze(1)  # (B, 1, h, w) -> (B, h, w)
    return (-picked / np.log(2)).cpu()


@torch.no_grad()
def code_nll_bits(
    run: LoadedRun, codes: torch.Tensor, slices: torch.Tensor | None = None, top: torch.Tensor | None = None
) -> torch.Tensor:
    """``-log2 p(code | codes before it)`` at every position (B, h, w), from one full prior pass (fp32);
    for a two-level run the bottom prior reads the top codes ``top`` as its context."""
    prior = run.require_prior()
    condition = _condition(run, slices)
    device = run.device
    logits = prior(
        codes.to(device),
        condition.to(device) if condition is not None else None,
        top.to(device) if top is not None else None,
    )
    return _nll_bits(logits, codes.to(device))


@torch.no_grad()
def top_nll_bits(run: LoadedRun, top: torch.Tensor, slices: torch.Tensor | None = None) -> torch.Tensor:
    """The top map's likelihood map (B, h/t, w/t) in bits under the top prior of a two-level run."""
    prior = run.require_top_prior()
    condition = _condition(run, slices, run.config.top_prior)
    logits = prior(top.to(run.device), condition.to(run.device) if condition is not None else None)
    return _nll_bits(logits, top.to(run.device))


@torch.no_grad()
def reversed_top_nll_bits(run: LoadedRun, top: torch.Tensor, slices: torch.Tensor | None = None) -> torch.Tensor:
    """The top map's NLL (B, h, w) under the reversed-order top prior, in the map's own orientation."""
    prior = run.top_reversed_prior
    if prior is None:
        raise RunError(
            f"{run.root.root}: no reversed-order top prior (run `brainvq train-prior --level top-reversed`)"
        )
    turned = reverse_order(top)
    condition = _condition(run, slices, run.config.top_prior)
    logits = prior(turned.to(run.device), condition.to(run.device) if condition is not None else None)
    return reverse_order(_nll_bits(logits, turned.to(run.device)))


def complete(
    run: LoadedRun, image: torch.Tensor, keep_rows: int, n: int, *, seed: int = 0, slice_index: int | None = None
) -> torch.Tensor:
    """``n`` completions (n, 1, H, W) of one image (1, 1, H, W) keeping its first ``keep_rows`` code rows."""
    encoded = encode(run, image)
    height = encoded.codes.shape[1]
    if not 0 <= keep_rows <= height:
        raise RunError(f"--keep-rows must be in 0..{height} (the code map has {height} rows)")
    slices = torch.full((n,), slice_index, dtype=torch.long) if slice_index is not None else None
    generator = torch.Generator().manual_seed(seed)
    top = None
    if encoded.top is not None:  # two levels: complete the top map's rows below the kept part first
        factor = height // encoded.top.shape[1]
        top = _complete_rows(
            run.require_top_prior(), encoded.top, keep_rows // factor, n, generator,
            _condition(run, slices, run.config.top_prior), run.device,
        )  # fmt: skip
    new = _complete_rows(
        run.require_prior(), encoded.codes, keep_rows, n, generator, _condition(run, slices), run.device, top
    )
    return decode(run, new, top)


def _complete_rows(
    prior: Any,
    codes: torch.Tensor,
    keep_rows: int,
    n: int,
    generator: torch.Generator,
    condition: torch.Tensor | None,
    device: torch.device,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    start = codes.repeat(n, 1, 1)
    redraw = torch.zeros_like(start, dtype=torch.bool)
    redraw[:, keep_rows:] = True
    return resample_codes(
        prior, start, redraw, generator=generator, condition=condition, context=context, device=device
    )


@torch.no_grad()
def decode(run: LoadedRun, codes: torch.Tensor, top: torch.Tensor | None = None) -> torch.Tensor:
    dtype = autocast_dtype(inference_precision(run.device))
    with autocast_context(run.device, dtype):
        top = top.to(run.device) if top is not None else None
        return decode_levels(run.vqvae, codes.to(run.device), top).float().clamp(0, 1).cpu()


def complete_image(
    run: LoadedRun,
    image_path: Path,
    keep_rows: int,
    n: int,
    out: Path,
    *,
    seed: int = 0,
    slice_index: int | None = None,
) -> Path:
    """``brainvq complete``: ``n`` completions of one slice of a folder (its slice index from the folder's
    names or samples record unless given), drawn beside the original and the part kept; the figure's path."""
    from brainvq.data.dataset import load_split
    from brainvq.data.layout import record_slice
    from brainvq.figures import image_grid

    if not image_path.is_file():
        raise RunError(f"{image_path}: image not found")
    dataset = load_split(image_path.parent, "all", in_memory=False)
    index = next((i for i, r in enumerate(dataset.records) if r.path.name == image_path.name), None)
    if index is None:
        raise RunError(f"{image_path}: not one of the folder's slices (a grid or an unlisted image)")
    image = dataset.images([index])
    known = record_slice(dataset.records[index])
    if slice_index is None and known >= 0:
        slice_index = known
    if not run.config.prior.condition_on_slice:
        slice_index = None
    completions = complete(run, image, keep_rows, n, seed=seed, slice_index=slice_index)
    cut = keep_rows * (image.shape[-2] // run.code_shape[0])
    shown = image.clone()
    shown[..., cut:, :] *= 0.35  # the part the prior does not see, dimmed
    titles = ["original", f"kept: first {keep_rows} code rows", *[f"completion {k + 1}" for k in range(n)]]
    return image_grid(torch.cat([image, shown, completions]), out / "completions.png", titles=titles,
                      title=f"{image_path.name}: completions (seed {seed})")  # fmt: skip
