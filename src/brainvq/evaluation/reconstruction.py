"""Reconstruction quality and prior likelihood of a run on a split (``brainvq evaluate``): SSIM, PSNR,
MS-SSIM, code usage, bits per code, and a figure of originals beside reconstructions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from brainvq.codes import CodeMaps, check_image_size, decode_levels, encode_levels
from brainvq.data.dataset import SliceDataset, load_split
from brainvq.data.layout import scan_split
from brainvq.devices import (
    autocast_dtype,
    inference_precision,
    is_main_process,
    limit_heap_growth,
)
from brainvq.evaluation.metrics import evaluate_prior, evaluate_reconstructions
from brainvq.figures import all_training_figures, reconstruction_grid
from brainvq.runs import (
    LoadedRun,
    atomic_write_json,
    load_run,
)


def open_split(data_root: str | Path, split: str, *, masks: bool = False) -> SliceDataset:
    """A split that streams from disk (one batch of images in memory at a time), with masks when asked
    for and present."""
    with_masks = masks and scan_split(data_root, split).has_masks
    return load_split(data_root, split, in_memory=False, with_masks=with_masks)


def evaluate_run(
    run_root: str | Path,
    data_root: str | Path,
    split: str,
    *,
    batch_size: int = 16,
    device: str = "auto",
    precision: str | None = None,
) -> dict[str, Any]:
    """Reconstruction metrics (and prior metrics when a prior exists) on one split; writes
    ``RUN/metrics/evaluate_{split}.json`` and ``RUN/figures/reconstructions_{split}.png``.

    Streams the split in batches; the prior is scored on the code maps of this same pass. Runs at
    the precision that fits the device it runs on (``precision`` overrides), stated in the result.
    """
    limit_heap_growth()
    loaded = load_run(run_root, device)
    precision = inference_precision(loaded.device, precision)
    dataset = open_split(data_root, split, masks=True)
    check_image_size(loaded.vqvae, dataset.image_size, loaded.image_size)
    started = time.perf_counter()
    dtype = autocast_dtype(precision)
    summary = evaluate_reconstructions(
        loaded.vqvae,
        dataset,
        batch_size,
        dtype,
        keep_codes=loaded.prior is not None or loaded.top_prior is not None,
    )
    result: dict[str, Any] = {"split": split, "images": summary["images"]}
    for key in (
        "ssim", "ssim_seed", "psnr", "ms_ssim", "brain_ssim", "brain_psnr", "brain_images", "brain_region",
        "codes_used", "perplexity", "top_codes_used", "top_perplexity", "top_only_ssim",
    ):  # fmt: skip
        if key in summary or not key.startswith("top_"):
            result[key] = summary.get(key)
    result["ssim_seed_note"] = "tf.image.ssim(max_val=3) on [0,1] images, as in the seed report; not standard SSIM"
    result["psnr_note"] = "mean per-image PSNR, MSE floored at 8-bit quantisation noise (at most 58.9 dB)"
    two_levels = loaded.levels == 2
    if loaded.prior is not None or loaded.top_prior is not None:
        codes = CodeMaps(
            summary["codes"], dataset.subjects(), dataset.slice_indices(), split,
            loaded.config.model.num_embeddings, dataset.image_size, loaded.vqvae_hash,
            summary.get("top_codes"), loaded.config.model.top_num_embeddings if two_levels else None,
        )  # fmt: skip
        if loaded.prior is not None:  # the one prior, or the bottom prior given the true top maps
            prior_config = loaded.config.prior
            result.update(evaluate_prior(loaded.prior, codes, batch_size, prior_config.condition_on_slice, dtype))
        if loaded.top_prior is not None:
            top_config = loaded.config.top_prior
            top = evaluate_prior(
                loaded.top_prior, codes.level("top"), batch_size, top_config.condition_on_slice, dtype
            )
            result.update({f"top_{key}": value for key, value in top.items()})
    for problem in (loaded.prior_problem, loaded.top_prior_problem):
        if problem:
            result.setdefault("prior_problem", problem)
    result["per_subject_ssim"] = summary.get("per_subject_ssim")
    result["precision"], result["device"] = precision, str(loaded.device)
    result["vqvae_hash"], result["prior_hash"] = loaded.vqvae_hash, loaded.prior_hash
    if two_levels:
        result["levels"], result["top_prior_hash"] = 2, loaded.top_prior_hash
    result["seconds"] = time.perf_counter() - started
    if is_main_process():
        atomic_write_json(loaded.root.metrics / f"evaluate_{split}.json", result)
        _reconstruction_figure(loaded, dataset, split, loaded.device)
        all_training_figures(loaded.root)
    return result


@torch.no_grad()
def _reconstruction_figure(loaded: LoadedRun, dataset: Any, split: str, device: torch.device) -> Path:
    from brainvq.training.tasks import snapshot_indices

    picks = snapshot_indices(dataset)[:6]
    images = dataset.images(picks).to(device)
    recon = decode_levels(loaded.vqvae, *encode_levels(loaded.vqvae, images)).float().cpu()
    return reconstruction_grid(
        images.cpu(),
        recon,
        loaded.root.figures / f"reconstructions_{split}.png",
        title=f"{split}: original / reconstruction / error",
    )
