"""Image and code metrics: SSIM (standard and the seed's variant), PSNR, MS-SSIM, code usage, prior NLL.

``ssim`` is the standard definition (Wang et al. 2004, "Image Quality Assessment: From Error
Visibility to Structural Similarity"): Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range
1 on images in [0, 1], computed with torchmetrics. ``ssim_seed`` reproduces the seed report's
``tf.image.ssim(x, y, max_val=3)`` on [0, 1] images: the same formula with data range 3, whose
constants C1 and C2 are 9x larger, which inflates the score. It exists only so that numbers can be
compared with the seed's 0.963; do not report it as SSIM.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

if TYPE_CHECKING:
    from brainvq.codes import CodeMaps
    from brainvq.data import SliceDataset

SEED_SSIM_DATA_RANGE = 3.0


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Standard SSIM of each image pair (B,), images (B, 1, H, W) in [0, 1].

    torchmetrics computes the SSIM map with reflect padding and averages it over the whole image;
    the standard definition (Wang et al.'s reference code, scikit-image) averages only where the
    11x11 window fits inside the image, so the 5-pixel border of the map is cropped here.
    """
    _, ssim_map = structural_similarity_index_measure(
        pred.float(),
        target.float(),
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        data_range=data_range,
        reduction="none",
        return_full_image=True,
    )
    border = 5
    return ssim_map[..., border:-border, border:-border].mean(dim=(1, 2, 3))  # (B, 1, H, W) -> (B,)


def ssim_seed_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's SSIM variant (``tf.image.ssim(x, y, 3)`` on [0, 1] images): data range 3."""
    return ssim_per_image(pred, target, data_range=SEED_SSIM_DATA_RANGE)


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair (B,), data range 1."""
    return peak_signal_noise_ratio(pred.float(), target.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))


def ms_ssim_supported(image_size: tuple[int, int]) -> bool:
    """MS-SSIM with 5 scales and an 11-pixel window needs images larger than 160 pixels a side."""
    return min(image_size) > 160


def ms_ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MS-SSIM (Wang et al. 2003) of each pair (B,), with ReLU-normalised contrast terms (no NaNs)."""
    value = multiscale_structural_similarity_index_measure(
        pred.float(), target.float(), data_range=1.0, reduction="none", normalize="relu"
    )
    assert isinstance(value, torch.Tensor)
    return value


def code_usage(counts: torch.Tensor) -> tuple[int, float]:
    """(codes used, perplexity) of a code-count histogram (K,)."""
    counts = counts.double()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return int((counts > 0).sum()), float(entropy.exp())


@dataclass
class ReconstructionMeter:
    """Accumulates per-image reconstruction metrics and code counts over batches."""

    num_embeddings: int
    full: bool = True  # False: only SSIM, PSNR and code usage (the cheap per-epoch validation)
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    subjects: list[int] = field(default_factory=list)
    counts: torch.Tensor | None = None

    def update(
        self,
        recon: torch.Tensor,
        target: torch.Tensor,
        indices: torch.Tensor,
        subjects: torch.Tensor | None = None,
    ) -> None:
        recon, target = recon.float().clamp(0, 1), target.float()
        self.values["ssim"] += ssim_per_image(recon, target).tolist()
        self.values["psnr"] += psnr_per_image(recon, target).tolist()
        self.values["mse"] += ((recon - target) ** 2).mean(dim=(1, 2, 3)).tolist()
        if self.full:
            self.values["ssim_seed"] += ssim_seed_per_image(recon, target).tolist()
        if self.full and ms_ssim_supported(tuple(target.shape[-2:])):  # type: ignore[arg-type]
            self.values["ms_ssim"] += ms_ssim_per_image(recon, target).tolist()
        batch_counts = torch.bincount(indices.flatten().cpu(), minlength=self.num_embeddings)
        self.counts = batch_counts if self.counts is None else self.counts + batch_counts
        if subjects is not None:
            self.subjects += subjects.tolist()

    def summary(self) -> dict[str, Any]:
        """Means of every metric, codes used and perplexity, and per-subject mean SSIM."""
        result: dict[str, Any] = {"images": len(self.values["ssim"])}
        for name in ("ssim", "ssim_seed", "psnr", "ms_ssim", "mse"):
            values = self.values.get(name)
            result[name] = float(sum(values) / len(values)) if values else None
        if self.counts is not None:
            result["codes_used"], result["perplexity"] = code_usage(self.counts)
        if self.subjects and min(self.subjects) >= 0:
            per_subject: dict[int, list[float]] = defaultdict(list)
            for subject, value in zip(self.subjects, self.values["ssim"], strict=True):
                per_subject[subject].append(value)
            result["per_subject_ssim"] = {f"{s:03d}": sum(v) / len(v) for s, v in sorted(per_subject.items())}
        return result


@dataclass
class PriorMeter:
    """Accumulates prior accuracy (argmax equals the true code) and NLL in bits per code."""

    total_nll: float = 0.0
    correct: int = 0
    count: int = 0

    def update(self, logits: torch.Tensor, codes: torch.Tensor) -> None:
        logits = logits.float()
        nll = torch.nn.functional.cross_entropy(logits, codes, reduction="sum")
        self.total_nll += float(nll)
        self.correct += int((logits.argmax(1) == codes).sum())
        self.count += codes.numel()

    def summary(self) -> dict[str, float]:
        if self.count == 0:
            return {"prior_accuracy": float("nan"), "prior_nll_bits": float("nan")}
        return {
            "prior_accuracy": self.correct / self.count,
            "prior_nll_bits": self.total_nll / self.count / math.log(2),
        }


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` to ``dtype`` on ``device``, or a disabled context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


@torch.no_grad()
def evaluate_reconstructions(
    model: nn.Module,
    dataset: SliceDataset,
    batch_size: int,
    autocast: torch.dtype | None = None,
    full: bool = True,
) -> dict[str, Any]:
    """SSIM, ssim_seed, PSNR, MS-SSIM, code usage and per-subject SSIM of a VQ-VAE on ``dataset``
    (model calls under ``autocast`` dtype when given; metrics always in float32)."""
    from brainvq.data import iterate_batches

    config: Any = model.config
    meter = ReconstructionMeter(config.num_embeddings, full=full)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for batch in iterate_batches(dataset, batch_size):
        images = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
        with autocast_context(device, autocast):
            output = model(images)
        meter.update(output.recon.float(), images, output.indices, batch["subject"])
    model.train(was_training)
    return meter.summary()


@torch.no_grad()
def evaluate_prior(
    model: nn.Module, codes: CodeMaps, batch_size: int, conditioned: bool, autocast: torch.dtype | None = None
) -> dict[str, float]:
    """Prior accuracy and NLL in bits per code on ``codes``."""
    meter = PriorMeter()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(codes), batch_size):
        batch = codes.batch(list(range(start, min(start + batch_size, len(codes)))))
        target = batch["codes"].to(device)
        condition = batch["slice"].to(device).clamp(min=0) if conditioned else None
        with autocast_context(device, autocast):
            logits = model(target, condition)
        meter.update(logits, target)
    model.train(was_training)
    return meter.summary()
