"""Figures for papers and reports (matplotlib, PNG): training curves, codebook usage,
reconstruction grids, reconstructions across epochs, and grids of generated slices."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from brainvq.runs import RunDir, atomic_save_figure

DPI = 110


def save_figure(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    atomic_save_figure(path, figure, dpi=DPI)
    plt.close(figure)
    return path


def _history(run: RunDir, stage: str) -> dict[str, Any] | None:
    path = run.metrics / f"{stage}_history.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _series(epochs: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    points = [(e["step"], e[key]) for e in epochs if e.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def vqvae_curves(run: RunDir) -> list[Path]:
    """``vqvae_curves.png`` (training loss and validation SSIM/PSNR) and ``codebook_usage.png``."""
    history = _history(run, "vqvae")
    if history is None:
        return []
    figure, (loss_ax, ssim_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = history["steps"]
    if steps:
        loss_ax.plot([s[0] for s in steps], [s[1] for s in steps], lw=1)
        loss_ax.set_yscale("log")
    loss_ax.set(xlabel="step", ylabel="training loss (recon + VQ)", title="VQ-VAE training loss")
    x, ssim = _series(history["epochs"], "val_ssim")
    ssim_ax.plot(x, ssim, "o-", color="C1", label="SSIM")
    ssim_ax.set(xlabel="step", ylabel="validation SSIM", title="Validation SSIM / PSNR")
    x, psnr = _series(history["epochs"], "val_psnr")
    if psnr:
        twin = ssim_ax.twinx()
        twin.plot(x, psnr, "s--", color="C2", label="PSNR")
        twin.set_ylabel("validation PSNR (dB)")
    paths = [save_figure(figure, run.figures / "vqvae_curves.png")]
    figure, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label in (("train_codes_used", "train (per epoch)"), ("val_codes_used", "validate")):
        x, used = _series(history["epochs"], key)
        ax.plot(x, used, "o-", label=label)
    x, perplexity = _series(history["epochs"], "val_perplexity")
    ax.plot(x, perplexity, "^:", label="validate perplexity")
    ax.set(xlabel="step", ylabel="codes", title="Codebook usage", ylim=(0, None))
    ax.legend()
    paths.append(save_figure(figure, run.figures / "codebook_usage.png"))
    return paths


def prior_curves(run: RunDir, stage: str = "prior") -> list[Path]:
    """``prior_curves.png`` (``prior_top_curves.png`` for a two-level run's top prior): training NLL
    and validation NLL / accuracy."""
    history = _history(run, stage)
    if history is None:
        return []
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = history["steps"]
    loss_ax.plot([s[0] for s in steps], [s[1] / np.log(2) for s in steps], lw=1, label="train")
    x, nll = _series(history["epochs"], "val_prior_nll_bits")
    loss_ax.plot(x, nll, "o-", label="validate")
    loss_ax.set(xlabel="step", ylabel="NLL (bits per code)", title="Prior NLL")
    loss_ax.legend()
    x, accuracy = _series(history["epochs"], "val_prior_accuracy")
    acc_ax.plot(x, accuracy, "o-", color="C1")
    acc_ax.set(xlabel="step", ylabel="accuracy", title="Prior validation accuracy")
    if stage == "prior_top":
        figure.suptitle("Top prior (two-level run)")
    return [save_figure(figure, run.figures / f"{stage}_curves.png")]


def reconstruction_grid(originals: torch.Tensor, recons: torch.Tensor, path: Path, title: str = "") -> Path:
    """Rows: original, reconstruction, absolute error; one column per image ((N, 1, H, W) in [0, 1])."""
    count = len(originals)
    figure, axes = plt.subplots(3, count, figsize=(2.2 * count, 6.8), squeeze=False)
    for col in range(count):
        original, recon = originals[col, 0].float().numpy(), recons[col, 0].float().numpy()
        for row, (image, cmap, vmax) in enumerate(
            ((original, "gray", 1.0), (recon, "gray", 1.0), (np.abs(original - recon), "magma", 0.25))
        ):
            axes[row, col].imshow(image, cmap=cmap, vmin=0.0, vmax=vmax)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    for row, label in enumerate(("original", "reconstruction", "|error| (0-0.25)")):
        axes[row, 0].set_ylabel(label)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def reconstructions_across_epochs(run: RunDir, max_columns: int = 8) -> Path | None:
    """``reconstructions_across_epochs.png`` from the snapshots saved during training (the seed's strip)."""
    originals_path = run.snapshots / "originals.pt"
    epochs = sorted(run.snapshots.glob("epoch_*.pt"))
    if not originals_path.is_file() or not epochs:
        return None
    if len(epochs) > max_columns - 1:
        picks = np.linspace(0, len(epochs) - 1, max_columns - 1).round().astype(int)
        epochs = [epochs[i] for i in sorted(set(picks))]
    originals = torch.load(originals_path, weights_only=True)
    columns = [("original", originals)] + [
        (f"epoch {int(p.stem.split('_')[1])}", torch.load(p, weights_only=True)) for p in epochs
    ]
    rows = len(originals)
    figure, axes = plt.subplots(rows, len(columns), figsize=(1.9 * len(columns), 1.9 * rows), squeeze=False)
    for col, (label, images) in enumerate(columns):
        for row in range(rows):
            axes[row, col].imshow(images[row, 0].numpy(), cmap="gray", vmin=0, vmax=255)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        axes[0, col].set_title(label, fontsize=9)
    return save_figure(figure, run.figures / "reconstructions_across_epochs.png")


def image_grid(images: torch.Tensor, path: Path, titles: Sequence[str] | None = None, title: str = "") -> Path:
    """A near-square grid of (N, 1, H, W) images in [0, 1]."""
    count = len(images)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    figure, axes = plt.subplots(
        rows, cols, figsize=(2.0 * cols, 2.0 * rows + (0.4 if title else 0)), squeeze=False
    )
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < count:
            ax.imshow(images[index, 0].float().numpy(), cmap="gray", vmin=0, vmax=1)
            if titles:
                ax.set_title(titles[index], fontsize=8)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def all_training_figures(run: RunDir) -> list[Path]:
    """Every figure that can be drawn from the run's histories and snapshots."""
    paths = vqvae_curves(run) + prior_curves(run) + prior_curves(run, "prior_top")
    strip = reconstructions_across_epochs(run)
    return paths + ([strip] if strip else [])
