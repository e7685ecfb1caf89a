"""What each stage trains: the VQ-VAE's task and the priors' task (one per level), for the engine.

A task builds its model, turns batch indices into a loss, and validates (additive statistics, so
DDP ranks can each validate a shard). The judge's task lives with the judge (:mod:`brainvq.evaluation.judge`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch import nn

from brainvq.codes import CodeMaps, slice_condition
from brainvq.config import (
    Config,
    TrainConfig,
)
from brainvq.data.dataset import SliceDataset
from brainvq.devices import (
    autocast_context,
    autocast_dtype,
)
from brainvq.evaluation.metrics import (
    PriorMeter,
    ReconstructionMeter,
    code_usage,
    evaluate_prior,
    evaluate_reconstructions,
    ssim_per_image,
)
from brainvq.models.priors import build_prior
from brainvq.models.vqvae import build_vqvae
from brainvq.runs import RunDir, atomic_torch_save
from brainvq.training.task import StepOutput, Task

SNAPSHOT_IMAGES = 4


def reconstruction_loss(
    kind: str,
    prediction: torch.Tensor,
    recon: torch.Tensor,
    target: torch.Tensor,
    ssim_weight: float,
    image_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mse`` (default), ``l1`` or ``mse+ssim`` (MSE + w * (1 - SSIM), as the seed's driver did).

    ``prediction`` is what the pixel losses see (the unclamped decoder output with ``output=clamp``),
    ``recon`` the image in [0, 1] that SSIM sees. ``image_weights`` (B,): a weighted mean over the
    images instead of the plain mean (see ``model.bottom_dropout_weight``).
    """
    prediction = prediction.float()
    if kind not in ("mse", "l1", "mse+ssim"):
        raise ValueError(f"train.recon_loss must be 'mse', 'l1' or 'mse+ssim', got {kind!r}")
    if kind == "l1":
        per_image = (prediction - target).abs().mean(dim=(1, 2, 3))  # (B,)
    else:
        per_image = ((prediction - target) ** 2).mean(dim=(1, 2, 3))  # (B,)
    if kind == "mse+ssim":
        per_image = per_image + ssim_weight * (1 - ssim_per_image(recon, target))
    if image_weights is None:
        return per_image.mean()
    weights = image_weights.to(per_image.dtype)
    return (weights * per_image).sum() / weights.sum()


class SliceTask(Task):
    """A task that trains on a split of slices and validates on another (the VQ-VAE, the judge)."""

    def __init__(self, config: Config, train: TrainConfig, train_set: SliceDataset, val_set: SliceDataset | None):
        super().__init__(config, train)
        self.train_set, self.val_set = train_set, val_set

    def train_size(self) -> int:
        return len(self.train_set)

    def validation_size(self) -> int:
        return len(self.val_set) if self.val_set is not None else 0


class VQVAETask(SliceTask):
    """Trains the VQ-VAE on the train split; validates SSIM, PSNR and code usage on the validate split."""

    stage = "vqvae"
    best_metric = "val_ssim"
    best_mode = "max"

    def __init__(self, config: Config, train: TrainConfig, train_set: SliceDataset, val_set: SliceDataset | None):
        super().__init__(config, train, train_set, val_set)
        self.epoch_counts = torch.zeros(config.model.num_embeddings, dtype=torch.float64)

    def build_model(self) -> nn.Module:
        model = build_vqvae(self.config.model)
        model.code_shape(self.train_set.image_size)
        return model

    def load_batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {"image": self.train_set.images(indices)}

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        images = batch["image"]
        output = model(images)
        prediction = output.decoded if self.config.model.output == "clamp" else output.recon
        recon = reconstruction_loss(
            self.train_config.recon_loss, prediction, output.recon, images, self.train_config.ssim_weight,
            self.image_weights(output.kept),
        )  # fmt: skip
        loss = recon + output.vq_loss
        logs = {
            "loss": loss.item(),
            "recon_loss": recon.item(),
            "vq_loss": output.vq_loss.item(),
            "perplexity": output.perplexity.item(),
        }
        if output.top_perplexity is not None:
            logs["top_perplexity"] = output.top_perplexity.item()
        return StepOutput(loss, logs, output.counts.detach())

    def image_weights(self, kept: torch.Tensor | None) -> torch.Tensor | None:
        """Per-image loss weights (B,): ``model.bottom_dropout_weight`` for dropped images, 1 for the rest."""
        weight = self.config.model.bottom_dropout_weight
        if kept is None or weight == 1.0:
            return None
        return torch.where(kept, 1.0, weight)

    def on_step(self, output: StepOutput) -> None:
        self.epoch_counts += output.extra.double().cpu()

    def epoch_metrics(self) -> dict[str, float]:
        used, perplexity = code_usage(self.epoch_counts)
        self.epoch_counts.zero_()
        return {"train_codes_used": used, "train_perplexity": perplexity}

    @torch.no_grad()
    def validation_statistics(self, model: nn.Module, indices: list[int]) -> dict[str, torch.Tensor]:
        assert self.val_set is not None
        meter = ReconstructionMeter(self.config.model.num_embeddings, full=False)
        if indices:
            evaluate_reconstructions(
                model, self.val_set, self.train_config.val_batch_size, autocast_dtype(self.config.fabric.precision),
                full=False, indices=indices, meter=meter,
            )  # fmt: skip
        return meter.statistics()

    def validation_metrics(self, statistics: dict[str, torch.Tensor]) -> dict[str, float]:
        return {f"val_{k}": v for k, v in ReconstructionMeter.from_statistics(statistics).items()}

    @torch.no_grad()
    def on_validated(self, model: nn.Module, fabric: Fabric, run: RunDir, epoch: int) -> None:
        dataset = self.val_set or self.train_set
        if not fabric.is_global_zero or epoch % max(1, self.train_config.snapshot_every_epochs):
            return
        picks = snapshot_indices(dataset)
        images = dataset.images(picks).to(fabric.device)
        was_training = model.training
        model.eval()
        with autocast_context(fabric.device, autocast_dtype(self.config.fabric.precision)):
            recon = model(images).recon.float()
        model.train(was_training)
        to_uint8 = lambda t: (t.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu()  # noqa: E731
        if not (run.snapshots / "originals.pt").exists():
            atomic_torch_save(run.snapshots / "originals.pt", to_uint8(images))
        atomic_torch_save(run.snapshots / f"epoch_{epoch:04d}.pt", to_uint8(recon))

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_counts": self.epoch_counts, "image_size": list(self.train_set.image_size)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch_counts = state["epoch_counts"].double()


def snapshot_indices(dataset: SliceDataset) -> list[int]:
    """A few fixed slices spread over the split (mid-volume slices when slice ids are known)."""
    candidates = [i for i, r in enumerate(dataset.records) if r.slice_index in (-1, 10, 14, 18, 22)]
    candidates = candidates or list(range(len(dataset)))
    step = max(1, len(candidates) // SNAPSHOT_IMAGES)
    return candidates[::step][:SNAPSHOT_IMAGES]


class PriorTask(Task):
    """Trains a prior on the train split's code maps; validates accuracy and NLL (bits/code).

    ``level``: ``bottom`` (the one map of a one-level run, or the bottom map of a two-level run,
    conditioned on its top map; stage ``prior``), ``top`` (the top map; stage ``prior_top``,
    configured by ``top_prior`` and ``top_prior_train``) or ``top_reversed`` (the top map read from its
    last code back, for anomaly scores from a second ordering; stage ``prior_top_reversed``, same sections).
    """

    best_metric = "val_prior_nll_bits"
    best_mode = "min"

    def __init__(
        self,
        config: Config,
        train: TrainConfig,
        train_codes: CodeMaps,
        val_codes: CodeMaps | None,
        level: str = "bottom",
    ):
        super().__init__(config, train)
        self.level, self.stage = level, PRIOR_STAGES[level]
        self.prior_config = config.top_prior if level != "bottom" else config.prior
        before = self.prior_config.context_slices  # the stack prior's earlier slices
        self.train_codes = train_codes.level(level, before)
        self.val_codes = val_codes.level(level, before) if val_codes is not None else None
        if self.prior_config.condition_on_slice:
            for codes in (self.train_codes, self.val_codes):
                if codes is not None:
                    slice_condition(codes.slices, self.prior_config.num_slices, f"{codes.split} code maps")

    def build_model(self) -> nn.Module:
        return build_prior(self.prior_config, self.train_codes.num_embeddings)

    def train_size(self) -> int:
        return len(self.train_codes)

    def load_batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self.train_codes.batch(indices)

    def provenance(self) -> dict[str, Any]:
        return {"vqvae_hash": self.train_codes.vqvae_hash, "level": self.level}

    def _condition(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch["slice"] if self.prior_config.condition_on_slice else None  # checked in __init__

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        context = batch.get("context")
        if context is not None and self.train_config.context_corruption > 0:
            context = corrupt_context(context, self.train_config.context_corruption)
        logits = model(batch["codes"], self._condition(batch), context)
        loss = F.cross_entropy(logits.float(), batch["codes"])
        return StepOutput(loss, {"loss": loss.item(), "bits_per_code": loss.item() / math.log(2)})

    def validation_size(self) -> int:
        return len(self.val_codes) if self.val_codes is not None else 0

    @torch.no_grad()
    def validation_statistics(self, model: nn.Module, indices: list[int]) -> dict[str, torch.Tensor]:
        assert self.val_codes is not None
        meter = PriorMeter()
        if indices:
            evaluate_prior(
                model, self.val_codes, self.train_config.val_batch_size, self.prior_config.condition_on_slice,
                autocast_dtype(self.config.fabric.precision), indices=indices, meter=meter,
            )  # fmt: skip
        return meter.statistics()

    def validation_metrics(self, statistics: dict[str, torch.Tensor]) -> dict[str, float]:
        return {f"val_{k}": v for k, v in PriorMeter.from_statistics(statistics).items()}


def corrupt_context(context: torch.Tensor, share: float) -> torch.Tensor:
    """``context`` (B, [M,] h, w) with about ``share`` of each map's codes replaced by the codes at random
    positions of the same map (a "no previous slice" map stays one); the training-time noise of
    ``context_corruption``, from torch's global generator like dropout."""
    flat = context.flatten(-2).flatten(0, -2)  # (B, [M,] h, w) -> (B*M, h*w)
    positions = torch.randint(0, flat.shape[1], flat.shape, device=flat.device)
    replaced = torch.rand(flat.shape, device=flat.device) < share
    return torch.where(replaced, flat.gather(1, positions), flat).view_as(context)  # -> (B, [M,] h, w)


PRIOR_STAGES = {
    "bottom": "prior",
    "top": "prior_top",
    "top_reversed": "prior_top_reversed",
    "stack": "prior_stack",
}
