"""Where is this brain unusual: likelihood maps, completions and anomaly maps from the prior.

* :func:`code_nll_bits`: the prior is causal, so one full pass over a code map gives every code's
  conditional probability; ``-log2 p`` per code is the likelihood map (bits).
* :func:`complete`: keep the codes of the first rows of a real slice and draw the rest from the
  prior (ordinary ancestral sampling started from a prefix, with the fast sampler).
* :func:`heal`: the anomaly method of Pinaya et al. 2022 ("Unsupervised brain imaging 3D anomaly
  detection and segmentation with transformers", Medical Image Analysis; and their 2021 VQ-VAE +
  transformer work): codes whose probability under the prior falls below a threshold (a low
  quantile of the per-code probabilities on healthy validate slices, stored with the run) are
  redrawn from the prior given the codes kept, the "healed" map is decoded, and the anomaly map
  is the absolute residual between input and healed image, masked to the (upsampled) redrawn
  region and smoothed. The baseline is the plain VQ-VAE reconstruction residual.

A raster-order prior sees only the codes above and to the left: a lesion's *first* rows are
judged with no knowledge of what lies below them, so the top edge of an anomaly is where the
prior is least informed; codes below an anomaly are judged given the anomalous codes above,
which can make them look likely (the anomaly "explains itself"). Pinaya et al. average several
orderings to soften this; brainvq uses the one raster order (see the README).

Two-level runs: likelihood maps are given for both levels (the bottom prior conditioned on the
image's own top map); completion draws the top map's missing rows with the top prior, then the
bottom map's with the bottom prior; healing redraws unlikely *bottom* codes given the image's
top map (the top map, 4-16x coarser, is kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from brainvq.codes import decode_levels, slice_condition
from brainvq.data import iterate_batches
from brainvq.devices import autocast_context, autocast_dtype, inference_precision
from brainvq.errors import RunError
from brainvq.files import atomic_write_json
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


def gaussian_blur(maps: torch.Tensor, sigma: float = SMOOTHING_SIGMA) -> torch.Tensor:
    """Separable Gaussian smoothing of maps (B, H, W)."""
    radius = max(1, int(3 * sigma))
    grid = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def probability_threshold(
    run: LoadedRun,
    codes: torch.Tensor,
    slices: torch.Tensor | None,
    quantile: float,
    top: torch.Tensor | None = None,
) -> float:
    """The ``quantile`` of per-code probabilities over healthy code maps (the redraw threshold)."""
    values = []
    for start in range(0, len(codes), 32):
        part = slices[start : start + 32] if slices is not None else None
        context = top[start : start + 32] if top is not None else None
        values.append(torch.exp2(-code_nll_bits(run, codes[start : start + 32], part, context)).flatten())
    everything = torch.cat(values)
    if len(everything) > 4_000_000:  # torch.quantile's size limit: an even subsample
        everything = everything[:: len(everything) // 4_000_000 + 1]
    return float(torch.quantile(everything, quantile))


def heal(
    run: LoadedRun, images: torch.Tensor, slices: torch.Tensor | None, threshold: float, *, seed: int = 0
) -> Healed:
    """Redraw codes with probability below ``threshold`` given the rest, decode, and make both maps."""
    encoded = encode(run, images)
    codes, recon, top = encoded.codes, encoded.recon, encoded.top
    nll = code_nll_bits(run, codes, slices, top)
    redraw = torch.exp2(-nll) < threshold
    condition = _condition(run, slices)
    new = resample_codes(
        run.require_prior(), codes, redraw, generator=seed, condition=condition, context=top, device=run.device
    )
    healed = decode(run, new, top)
    scale = images.shape[-1] // codes.shape[-1]
    region = redraw.float().repeat_interleave(scale, 1).repeat_interleave(scale, 2)  # (B, h, w) -> (B, H, W)
    region = F.max_pool2d(region.unsqueeze(1), 3, 1, 1).squeeze(1)  # one pixel of margin
    prior_map = gaussian_blur((images[:, 0] - healed[:, 0]).abs() * region)
    residual_map = gaussian_blur((images[:, 0] - recon[:, 0]).abs())
    return Healed(images, codes, new, recon, healed, redraw, nll, prior_map, residual_map)


def image_score(maps: torch.Tensor, fraction: float = TOP_FRACTION) -> torch.Tensor:
    """Per-image score (B,): the mean of the top ``fraction`` of the map's pixels."""
    flat = maps.flatten(1)
    count = max(1, int(fraction * flat.shape[1]))
    return flat.topk(count, dim=1).values.mean(1)


# ----------------------------------------------------------------------------- scoring against truth
@dataclass
class PixelScores:
    """Accumulates one method's maps over a split for pixel- and image-level scores."""

    values: list[torch.Tensor]
    truths: list[torch.Tensor]
    image_scores: list[float]
    image_truths: list[bool]

    @classmethod
    def empty(cls) -> PixelScores:
        return cls([], [], [], [])

    def update(self, maps: torch.Tensor, truth: torch.Tensor, brain: torch.Tensor) -> None:
        """Maps and truth (B, H, W); only brain pixels count (as in MOOD)."""
        self.values.append(maps[brain].half())
        self.truths.append(truth[brain])
        self.image_scores += image_score(maps).tolist()
        self.image_truths += truth.flatten(1).any(1).tolist()

    def summary(self) -> dict[str, float]:
        from torchmetrics.functional.classification import binary_auroc, binary_average_precision

        values = torch.cat(self.values).float()
        truths = torch.cat(self.truths)
        result = {
            "pixel_ap": float(binary_average_precision(values, truths.long())),
            "pixel_auroc": float(binary_auroc(values, truths.long())),
        }
        result.update(best_dice(values, truths))
        scores, labels = torch.tensor(self.image_scores), torch.tensor(self.image_truths).long()
        if 0 < int(labels.sum()) < len(labels):
            result["image_auroc"] = float(binary_auroc(scores, labels))
            result["image_ap"] = float(binary_average_precision(scores, labels))
        return result


def best_dice(values: torch.Tensor, truths: torch.Tensor, bins: int = 2000) -> dict[str, float]:
    """The best Dice over thresholds (global over the split), from histograms of the map values."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return {"best_dice": 0.0, "best_dice_threshold": high}
    edges = torch.linspace(low, high, bins + 1)
    positives = torch.histc(values[truths], bins, low, high).flip(0).cumsum(0).flip(0)  # count >= edge
    negatives = torch.histc(values[~truths], bins, low, high).flip(0).cumsum(0).flip(0)
    total_true = float(truths.sum())
    dice = 2 * positives / (positives + negatives + total_true).clamp_min(1)
    best = int(dice.argmax())
    return {"best_dice": float(dice[best]), "best_dice_threshold": float(edges[best])}


def dice_at(values: torch.Tensor, truths: torch.Tensor, threshold: float) -> float:
    predicted = values >= threshold
    return float(2 * (predicted & truths).sum() / (predicted.sum() + truths.sum()).clamp_min(1))


def save_threshold(run: LoadedRun, path: Path, threshold: float, quantile: float, split: str) -> None:
    atomic_write_json(
        path,
        {
            "probability_threshold": threshold,
            "quantile": quantile,
            "split": split,
            "vqvae_hash": run.vqvae_hash,
            "prior_hash": run.prior_hash,
        },
    )


# ----------------------------------------------------------------------------- the commands
@dataclass
class Inputs:
    """Images to score, with slice indices (from OASIS names) and optional tissue and truth masks."""

    dataset: Any  # brainvq.data.SliceDataset
    slices: torch.Tensor  # (N,) -1 unknown
    truth: list[Path] | None  # one lesion mask per image
    names: list[str]


def open_inputs(
    data: str | Path | None, split: str | None, images: str | Path | None, truth: str | Path | None
) -> Inputs:
    """``--data DATA --split S`` (truth: ``keras_png_slices_lesion_S`` when present) or ``--images DIR``."""
    from brainvq.data import load_split, record_slice, scan_split
    from brainvq.errors import DataError
    from brainvq.lesions import lesion_dir, lesion_name

    if (data is None) == (images is None):
        raise DataError("give either --data DATA --split S or --images DIR")
    if data is not None:
        split = split or "validate"
        dataset = load_split(data, split, in_memory=False, with_masks=scan_split(data, split).has_masks)
        folder = Path(truth) if truth is not None else lesion_dir(Path(data), split)
        truths = None
        if truth is not None or folder.is_dir():
            truths = [
                folder / (r.path.name if truth is not None else lesion_name(r.subject, r.slice_index))
                for r in dataset.records
            ]
    else:
        dataset = load_split(images, "all", in_memory=False)  # type: ignore[arg-type]
        truths = [Path(truth) / r.path.name for r in dataset.records] if truth is not None else None
    for path in truths or []:
        if not path.is_file():
            raise DataError(f"{path}: lesion mask missing (one per image, same file name)")
    slices = [record_slice(r) for r in dataset.records]
    return Inputs(dataset, torch.tensor(slices), truths, [r.path.name for r in dataset.records])


def _slices_or_none(inputs: Inputs, indices: list[int]) -> torch.Tensor | None:
    chosen = inputs.slices[indices]
    return chosen if bool((chosen >= 0).all()) else None


def overlay(image: np.ndarray, heat: np.ndarray, scale: float) -> np.ndarray:
    """RGB uint8: the gray slice with ``heat`` (same size, 0..scale) blended on top in 'inferno'."""
    from matplotlib import colormaps

    level = np.clip(heat / max(scale, 1e-12), 0, 1)
    colours = colormaps["inferno"](level)[..., :3]
    gray = np.repeat(image[..., None], 3, axis=2)
    alpha = (0.15 + 0.65 * level)[..., None] * (level[..., None] > 0.02)
    return ((gray * (1 - alpha) + colours * alpha) * 255 + 0.5).astype(np.uint8)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    from brainvq.files import atomic_save_image

    atomic_save_image(path, Image.fromarray(array))


def score_images(
    run: LoadedRun, inputs: Inputs, out: Path, *, batch_size: int = 16, maps: bool = True
) -> dict[str, Any]:
    """``brainvq score``: NLL maps (bits per code), totals per image, overlays and JSON under ``out``."""
    per_image = []
    for batch in iterate_batches(inputs.dataset, batch_size):
        index = batch["index"].tolist()
        encoded = encode(run, batch["image"])
        slices = _slices_or_none(inputs, index)
        nll = code_nll_bits(run, encoded.codes, slices, encoded.top)
        top_nll = top_nll_bits(run, encoded.top, slices) if encoded.top is not None else None
        for k, i in enumerate(index):
            name = inputs.names[i]
            entry = {"image": name, "nll_bits": float(nll[k].sum()), "bits_per_code": float(nll[k].mean())}
            if top_nll is not None:
                entry["top_nll_bits"], entry["top_bits_per_code"] = (
                    float(top_nll[k].sum()),
                    float(top_nll[k].mean()),
                )
            per_image.append(entry)
            if maps:
                np.save(out / "nll" / f"{Path(name).stem}.npy", nll[k].numpy().astype(np.float32))
                if top_nll is not None:
                    np.save(out / "nll" / f"{Path(name).stem}_top.npy", top_nll[k].numpy().astype(np.float32))
                scale = batch["image"].shape[-1] // nll.shape[-1]
                heat = nll[k].repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()
                _save_png(out / "overlays" / name, overlay(batch["image"][k, 0].numpy(), heat, 12.0))
    totals = [p["bits_per_code"] for p in per_image]
    result = {
        "images": len(per_image),
        "mean_bits_per_code": float(np.mean(totals)),
        "vqvae_hash": run.vqvae_hash,
        "prior_hash": run.prior_hash,
        "per_image": per_image,
    }
    if run.levels == 2:
        result["top_mean_bits_per_code"] = float(np.mean([p["top_bits_per_code"] for p in per_image]))
        result["top_prior_hash"] = run.top_prior_hash
    atomic_write_json(out / "scores.json", result)
    return result


def run_threshold(run: LoadedRun, quantile: float, data_root: str | Path | None) -> float:
    """The redraw threshold stored with the run (``RUN/metrics/anomaly_threshold.json``), computed
    from the validate split's code maps the first time (or when the run's checkpoints changed)."""
    import json

    from brainvq.codes import CodeMaps

    path = run.root.metrics / "anomaly_threshold.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if (stored.get("quantile"), stored.get("vqvae_hash"), stored.get("prior_hash")) == (
            quantile, run.vqvae_hash, run.prior_hash,
        ):  # fmt: skip
            return float(stored["probability_threshold"])
    split = run.config.data.val_split or "validate"
    code_path = run.root.code_file(split)
    if code_path.is_file():
        codes = CodeMaps.load(code_path).check_made_by(run.vqvae_hash, code_path)
    else:
        from brainvq.codes import encode_dataset
        from brainvq.data import load_split

        root = data_root or run.config.data.root
        if root is None:
            raise RunError(
                f"{run.root.root}: no {split} code maps to set the anomaly threshold (run `brainvq encode`)"
            )
        codes = encode_dataset(run.vqvae, load_split(root, split, in_memory=False), split, device=run.device,
                               vqvae_hash=run.vqvae_hash)  # fmt: skip
    slices = codes.slices if run.config.prior.condition_on_slice else None
    top = codes.top_indices.long() if codes.top_indices is not None else None
    threshold = probability_threshold(run, codes.indices.long(), slices, quantile, top)
    save_threshold(run, path, threshold, quantile, split)
    return threshold


def detect(
    run: LoadedRun,
    inputs: Inputs,
    out: Path,
    *,
    quantile: float = DEFAULT_QUANTILE,
    seed: int = 0,
    batch_size: int = 16,
    maps: bool = True,
    dice_threshold: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``brainvq anomaly``: both methods' maps (PNG, .npy, overlays), per-image scores and, with truth,
    pixel AP/AUROC, best Dice and image AUROC/AP for each method."""
    from PIL import Image

    from brainvq.metrics import foreground_mask

    threshold = run_threshold(run, quantile, None)
    scores = {"prior": PixelScores.empty(), "residual": PixelScores.empty()}
    per_image = []
    redrawn_fraction = []
    for batch in iterate_batches(inputs.dataset, batch_size):
        index = batch["index"].tolist()
        result = heal(run, batch["image"], _slices_or_none(inputs, index), threshold, seed=seed + index[0])
        redrawn_fraction.append(float(result.redrawn.float().mean()))
        brain = (batch["mask"] > 0) if "mask" in batch else foreground_mask(batch["image"])[:, 0]
        if inputs.truth is not None:
            truth = torch.stack(
                [torch.from_numpy(np.asarray(Image.open(inputs.truth[i]).convert("L")) > 0) for i in index]
            )
            scores["prior"].update(result.prior_map, truth, brain)
            scores["residual"].update(result.residual_map, truth, brain)
        prior_scores, residual_scores = image_score(result.prior_map), image_score(result.residual_map)
        for k, i in enumerate(index):
            name = inputs.names[i]
            per_image.append({"image": name, "prior_score": float(prior_scores[k]), "residual_score": float(residual_scores[k]),
                              "redrawn_codes": int(result.redrawn[k].sum())})  # fmt: skip
            if maps:
                stem = Path(name).stem
                for method, heat in (("prior", result.prior_map[k]), ("residual", result.residual_map[k])):
                    np.save(out / method / f"{stem}.npy", heat.numpy().astype(np.float16))
                    _save_png(out / method / name, (np.clip(heat.numpy() / 0.5, 0, 1) * 255).astype(np.uint8))
                    _save_png(
                        out / f"{method}_overlays" / name, overlay(result.images[k, 0].numpy(), heat.numpy(), 0.3)
                    )
                _save_png(out / "healed" / name, (result.healed[k, 0].numpy() * 255 + 0.5).astype(np.uint8))
    summary: dict[str, Any] = {
        "images": len(per_image),
        "probability_threshold": threshold,
        "quantile": quantile,
        "redrawn_fraction": float(np.mean(redrawn_fraction)),
        "vqvae_hash": run.vqvae_hash,
        "prior_hash": run.prior_hash,
    }
    if inputs.truth is not None:
        for method, accumulated in scores.items():
            summary[method] = accumulated.summary()
            if dice_threshold and method in dice_threshold:
                values, truths = torch.cat(accumulated.values).float(), torch.cat(accumulated.truths)
                summary[method]["dice_at_given_threshold"] = dice_at(values, truths, dice_threshold[method])
        truths = torch.cat(scores["prior"].truths)
        summary["lesion_pixel_fraction"] = float(truths.float().mean())
    summary["per_image"] = per_image
    atomic_write_json(out / "anomaly.json", summary)
    if maps and inputs.truth is not None:
        summary["figure"] = str(examples_figure(out, inputs))
    return summary


def examples_figure(out: Path, inputs: Inputs, count: int = 6, show_inputs: bool = True) -> Path:
    """``OUT/anomaly_examples.png``: for ``count`` lesioned slices spread over the split, the input,
    the true lesion mask, the prior method's map and the residual's map (both on one colour scale).
    ``show_inputs=False`` leaves the input row out (``anomaly_maps.png``, for sharing without images)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from brainvq.figures import save_figure

    assert inputs.truth is not None
    lesioned = [i for i, path in enumerate(inputs.truth) if np.asarray(Image.open(path)).any()]
    picks = lesioned[:: max(1, len(lesioned) // count)][:count]
    rows = ("input", "true lesion", "prior (healed residual)", "VQ-VAE residual")[0 if show_inputs else 1 :]
    figure, axes = plt.subplots(len(rows), len(picks), figsize=(2.2 * len(picks), 2.3 * len(rows)), squeeze=False)
    for col, i in enumerate(picks):
        name, stem = inputs.names[i], Path(inputs.names[i]).stem
        panels = [
            (inputs.dataset.images([i])[0, 0].numpy(), "gray", 1.0),
            (np.asarray(Image.open(inputs.truth[i])) > 0, "gray", 1.0),
            (np.load(out / "prior" / f"{stem}.npy").astype(np.float32), "inferno", 0.3),
            (np.load(out / "residual" / f"{stem}.npy").astype(np.float32), "inferno", 0.3),
        ][0 if show_inputs else 1 :]
        for row, (panel, colours, top) in enumerate(panels):
            axes[row, col].imshow(panel, cmap=colours, vmin=0, vmax=top)
            axes[row, col].axis("off")
            if col == 0:  # the row's name, inside its first panel
                axes[row, col].text(
                    0.03, 0.03, rows[row], color="white", fontsize=7, transform=axes[row, col].transAxes
                )
        axes[0, col].set_title(name.replace(".nii.png", ""), fontsize=7)
    return save_figure(figure, out / ("anomaly_examples.png" if show_inputs else "anomaly_maps.png"))


def prepare_out(out: Path, folders: tuple[str, ...]) -> None:
    from brainvq.files import mark_owned

    mark_owned(out, "anomaly")
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
