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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

from brainvq.devices import autocast_context

if TYPE_CHECKING:
    from brainvq.codes import CodeMaps
    from brainvq.data.dataset import SliceDataset

SEED_SSIM_DATA_RANGE = 3.0


SSIM_BORDER = 5  # half the 11-pixel window: where the window does not fit inside the image
PSNR_MSE_FLOOR = 1.0 / (12 * 255**2)  # the quantisation noise of 8-bit images: PSNR <= 58.9 dB
FOREGROUND_THRESHOLD = 0.1  # without masks, the brain region is original > 0.1, dilated by 2 pixels


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """The SSIM map (B, 1, H-10, W-10) of images (B, 1, H, W), cropped to where the window fits.

    torchmetrics computes the SSIM map with reflect padding; the standard definition (Wang et al.'s
    reference code, scikit-image) uses only positions where the 11x11 window fits inside the image,
    so the 5-pixel border of the map is cropped here.
    """
    _, full = structural_similarity_index_measure(
        pred.float(),
        target.float(),
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        data_range=data_range,
        reduction="none",
        return_full_image=True,
    )
    return full[..., SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER]


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Standard SSIM (Wang et al. 2004) of each image pair (B,), images (B, 1, H, W) in [0, 1]."""
    return ssim_map(pred, target, data_range).mean(dim=(1, 2, 3))  # (B, 1, h, w) -> (B,)


def ssim_seed_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's SSIM variant (``tf.image.ssim(x, y, 3)`` on [0, 1] images): data range 3."""
    return ssim_per_image(pred, target, data_range=SEED_SSIM_DATA_RANGE)


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for data range 1, with the MSE floored at 8-bit quantisation noise (1 / (12 * 255^2)).

    Two black slices have MSE 0 and an infinite PSNR; the floor keeps every value finite (at most
    58.9 dB) and meaningful: 8-bit data cannot be reconstructed more exactly than its quantisation.
    """
    return 10 * torch.log10(1.0 / mse.clamp_min(PSNR_MSE_FLOOR))


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair (B,), data range 1 (see :func:`psnr_from_mse`)."""
    return psnr_from_mse(((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3)))


def foreground_mask(target: torch.Tensor) -> torch.Tensor:
    """The stated brain region when no masks exist: original > 0.1, dilated by 2 pixels (B, 1, H, W) bool."""
    bright = (target.float() > FOREGROUND_THRESHOLD).float()
    return torch.nn.functional.max_pool2d(bright, kernel_size=5, stride=1, padding=2) > 0


def masked_metrics(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SSIM and PSNR inside ``mask`` (B, 1, H, W) bool, per image: (ssim (B,), psnr (B,), valid (B,) bool).

    SSIM averages the SSIM map over mask pixels (where the window fits); PSNR uses the MSE over
    mask pixels. Images whose mask is empty are not valid.
    """
    mask = mask.float()
    inner = mask[..., SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER]
    inner_area = inner.sum(dim=(1, 2, 3))
    ssim = (ssim_map(pred, target) * inner).sum(dim=(1, 2, 3)) / inner_area.clamp_min(1)
    area = mask.sum(dim=(1, 2, 3))
    mse = (((pred.float() - target.float()) ** 2) * mask).sum(dim=(1, 2, 3)) / area.clamp_min(1)
    return ssim, psnr_from_mse(mse), inner_area > 0


def ms_ssim_supported(image_size: tuple[int, int]) -> bool:
    """MS-SSIM with 5 scales and an 11-pixel window needs min(H, W) // 16 > 10 (176 pixels or more)."""
    return min(image_size) // 16 > 10


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
    brain_region: str = ""
    codes: list[torch.Tensor] = field(default_factory=list)  # per-batch code maps, when kept
    top_codes: list[torch.Tensor] = field(default_factory=list)  # two-level VQ-VAEs: the top maps
    top_counts: torch.Tensor | None = None  # two-level VQ-VAEs: top code counts

    def update(
        self,
        recon: torch.Tensor,
        target: torch.Tensor,
        indices: torch.Tensor,
        subjects: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        top_only: torch.Tensor | None = None,
    ) -> None:
        """Add a batch; ``masks`` (B, H, W) tissue labels (0 = background) give the brain region,
        else :func:`foreground_mask` does. ``top_only``: a two-level model's top maps decoded alone."""
        recon, target = recon.float().clamp(0, 1), target.float()
        self.values["ssim"] += ssim_per_image(recon, target).tolist()
        self.values["psnr"] += psnr_per_image(recon, target).tolist()
        self.values["mse"] += ((recon - target) ** 2).mean(dim=(1, 2, 3)).tolist()
        if self.full:
            brain = (masks > 0).unsqueeze(1).to(target.device) if masks is not None else foreground_mask(target)
            ssim, psnr, valid = masked_metrics(recon, target, brain)
            self.values["brain_ssim"] += ssim[valid].tolist()
            self.values["brain_psnr"] += psnr[valid].tolist()
            self.brain_region = "masks (label > 0)" if masks is not None else "original > 0.1, dilated 2 px"
        if self.full:
            self.values["ssim_seed"] += ssim_seed_per_image(recon, target).tolist()
        if self.full and ms_ssim_supported(tuple(target.shape[-2:])):  # type: ignore[arg-type]
            self.values["ms_ssim"] += ms_ssim_per_image(recon, target).tolist()
        if self.full and top_only is not None:  # what the top map carries alone (near 0: ignored)
            self.values["top_only_ssim"] += ssim_per_image(top_only.float(), target).tolist()
        batch_counts = torch.bincount(indices.flatten().cpu(), minlength=self.num_embeddings)
        self.counts = batch_counts if self.counts is None else self.counts + batch_counts
        if subjects is not None:
            self.subjects += subjects.tolist()

    def statistics(self) -> dict[str, torch.Tensor]:
        """Additive statistics (sums, counts, the code histogram) of the cheap metrics, so that shards
        of a split evaluated on several ranks can be summed and turned into exact means."""
        stats = {name: torch.tensor([sum(self.values[name]), len(self.values[name])], dtype=torch.float64)
                 for name in ("ssim", "psnr", "mse")}  # fmt: skip
        counts = self.counts if self.counts is not None else torch.zeros(self.num_embeddings, dtype=torch.long)
        stats["counts"] = counts.double().cpu()
        return stats

    @staticmethod
    def from_statistics(stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """Means, codes used and perplexity from (summed) :meth:`statistics`."""
        result = {"images": float(stats["ssim"][1])}
        for name in ("ssim", "psnr", "mse"):
            total, count = stats[name].tolist()
            result[name] = total / count if count else float("nan")
        result["codes_used"], result["perplexity"] = code_usage(stats["counts"])
        return result

    def summary(self) -> dict[str, Any]:
        """Means of every metric, codes used and perplexity, and per-subject mean SSIM."""
        result: dict[str, Any] = {"images": len(self.values["ssim"])}
        if self.full:
            result["brain_images"] = len(self.values["brain_ssim"])
            result["brain_region"] = self.brain_region
        two_level = ("top_only_ssim",) if self.values.get("top_only_ssim") else ()  # no null key for one level
        for name in ("ssim", "ssim_seed", "psnr", "ms_ssim", "mse", "brain_ssim", "brain_psnr", *two_level):
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

    def statistics(self) -> dict[str, torch.Tensor]:
        """Additive statistics (NLL sum, correct, count) for sharded evaluation."""
        return {"prior": torch.tensor([self.total_nll, self.correct, self.count], dtype=torch.float64)}

    @classmethod
    def from_statistics(cls, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        total_nll, correct, count = stats["prior"].tolist()
        return cls(total_nll, int(correct), int(count)).summary()

    def summary(self) -> dict[str, float]:
        if self.count == 0:
            return {"prior_accuracy": float("nan"), "prior_nll_bits": float("nan")}
        return {
            "prior_accuracy": self.correct / self.count,
            "prior_nll_bits": self.total_nll / self.count / math.log(2),
        }


@torch.no_grad()
def evaluate_reconstructions(
    model: nn.Module,
    dataset: SliceDataset,
    batch_size: int,
    autocast: torch.dtype | None = None,
    full: bool = True,
    keep_codes: bool = False,
    indices: Sequence[int] | None = None,
    meter: ReconstructionMeter | None = None,
) -> dict[str, Any]:
    """SSIM, ssim_seed, PSNR, MS-SSIM, brain-masked SSIM/PSNR, code usage and per-subject SSIM of a
    VQ-VAE on ``dataset`` (two levels: also ``top_only_ssim``, the top map decoded alone against the
    image, near 0 when the decoder ignores the top map), batch by batch (model calls under ``autocast`` dtype when given; metrics
    always in float32). With ``keep_codes``, ``codes`` (N, h, w) int16 holds the code maps."""
    from brainvq.data.dataset import iterate_batches

    config: Any = model.config
    meter = meter if meter is not None else ReconstructionMeter(config.num_embeddings, full=full)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for batch in iterate_batches(dataset, batch_size, indices):
        images = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
        with autocast_context(device, autocast):
            output = model(images)
            top_only = (
                model.decode_top(output.top_indices)  # type: ignore[operator]
                if meter.full and output.top_indices is not None
                else None
            )
        meter.update(output.recon.float(), images, output.indices, batch["subject"], batch.get("mask"), top_only)
        if keep_codes:
            meter.codes.append(output.indices.to(torch.int32).cpu())
            if output.top_indices is not None:
                meter.top_codes.append(output.top_indices.to(torch.int32).cpu())
        if output.top_counts is not None:
            top_counts = output.top_counts.detach().double().cpu()
            meter.top_counts = top_counts if meter.top_counts is None else meter.top_counts + top_counts
    model.train(was_training)
    summary = meter.summary()
    if meter.top_counts is not None:
        summary["top_codes_used"], summary["top_perplexity"] = code_usage(meter.top_counts)
    if keep_codes:
        summary["codes"] = torch.cat(meter.codes)
        summary["top_codes"] = torch.cat(meter.top_codes) if meter.top_codes else None
    return summary


@torch.no_grad()
def evaluate_prior(
    model: nn.Module,
    codes: CodeMaps,
    batch_size: int,
    conditioned: bool,
    autocast: torch.dtype | None = None,
    indices: Sequence[int] | None = None,
    meter: PriorMeter | None = None,
) -> dict[str, float]:
    """Prior accuracy and NLL in bits per code on ``codes`` (or the maps at ``indices``; slice
    indices checked by ``slice_condition``). Pass a ``meter`` to keep its additive statistics."""
    from brainvq.codes import slice_condition

    meter = meter if meter is not None else PriorMeter()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = list(range(len(codes))) if indices is None else list(indices)
    for start in range(0, len(order), batch_size):
        batch = codes.batch(order[start : start + batch_size])
        target = batch["codes"].to(device)
        num_slices = int(model.config.num_slices)  # type: ignore[union-attr, arg-type]
        condition = slice_condition(batch["slice"], num_slices, codes.split).to(device) if conditioned else None
        context = batch["context"].to(device) if "context" in batch else None  # two-level: the top maps
        with autocast_context(device, autocast):
            logits = model(target, condition, context)
        meter.update(logits, target)
    model.train(was_training)
    return meter.summary()
