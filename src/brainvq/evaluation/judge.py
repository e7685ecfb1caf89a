"""The judge stage: train the tissue/slice U-Net on real slices, load it, segment folders, embed images.

``brainvq train-judge --data DATA --out JUDGE`` trains :class:`brainvq.models.judge.Judge` on the
train split's tissue masks with the same engine, checkpoints, resume and logs as the VQ-VAE and
the prior, validating Dice per tissue and the slice-index error each epoch. ``JUDGE/judge.json``
records the hash of the judge's weights (:func:`weights_hash`); every score computed with a judge
carries that hash, so numbers from different judges are never compared by accident, while a judge
retrained with the same step budget (``judge_train.max_steps``) on the same software and machine
gets the same weights and so the same hash, and keeps earlier scores comparable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from brainvq.config import Config, config_from_dict
from brainvq.data.dataset import SliceDataset, iterate_batches, load_split
from brainvq.data.layout import scan_split
from brainvq.devices import autocast_context, autocast_dtype, inference_precision, is_main_process, resolve_device
from brainvq.errors import DataError, RunError
from brainvq.files import atomic_save_image, atomic_write_json
from brainvq.models.judge import Judge
from brainvq.runs import RunDir, load_checkpoint, load_module_state, stage_checkpoint
from brainvq.training.launch import fabric_config_check, launch_task, make_fabric, stage_loggers
from brainvq.training.task import StepOutput
from brainvq.training.tasks import SliceTask

TISSUES = ("csf", "gm", "wm")
MASK_LEVELS = np.array([0, 85, 170, 255], dtype=np.uint8)


# ----------------------------------------------------------------------------- measuring a judge
@dataclass
class JudgeScores:
    """What a judge says about a set of images."""

    features: torch.Tensor  # (N, F) float32
    fractions: torch.Tensor  # (N, 3) CSF/GM/WM fraction of each image's pixels
    slice_pred: torch.Tensor  # (N,) predicted slice index
    dice: dict[str, float] | None = None  # per tissue, when masks were given
    slice_error: float | None = None  # mean |predicted - true| slice index, when known


@torch.no_grad()
def judge_images(
    model: Judge, images: torch.Tensor, autocast: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (B, F), predicted labels (B, H, W), predicted slice (B,)) for images (B, 1, H, W)."""
    device = next(model.parameters()).device
    with autocast_context(device, autocast):
        output = model(images.to(device))
    labels = output.segmentation.float().argmax(1)  # (B, 4, H, W) -> (B, H, W)
    return output.features.float().cpu(), labels.cpu(), output.slice_logits.float().argmax(1).cpu()


def tissue_fractions(labels: torch.Tensor) -> torch.Tensor:
    """CSF, GM and WM fractions of each image's pixels (B, 3) from labels (B, H, W)."""
    return torch.stack([(labels == c).float().mean(dim=(1, 2)) for c in (1, 2, 3)], dim=1)


def tissue_overlap(labels: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tissue (CSF, GM, WM): |predicted & true| and |predicted| + |true| (3,) each, float64,
    additive over batches and ranks; Dice = 2 * overlap / totals over a whole split."""
    overlap = torch.tensor([float(((labels == c) & (masks == c)).sum()) for c in (1, 2, 3)], dtype=torch.float64)
    totals = torch.tensor(
        [float((labels == c).sum() + (masks == c).sum()) for c in (1, 2, 3)], dtype=torch.float64
    )
    return overlap, totals


def dice_per_tissue(overlap: torch.Tensor, totals: torch.Tensor) -> dict[str, float]:
    """Dice of each tissue and their mean, from :func:`tissue_overlap` sums."""
    dice = {t: float(2 * overlap[i] / totals[i].clamp_min(1)) for i, t in enumerate(TISSUES)}
    dice["mean"] = sum(dice.values()) / 3
    return dice


@torch.no_grad()
def score_dataset(
    model: Judge, dataset: SliceDataset, batch_size: int = 32, autocast: torch.dtype | None = None
) -> JudgeScores:
    """Run the judge over a dataset: features, tissue fractions, slice predictions, and Dice and
    slice error where the dataset has masks and slice indices."""
    model.eval()
    features, fractions, slices, truth_slices = [], [], [], []
    overlap = torch.zeros(3, dtype=torch.float64)
    totals = torch.zeros(3, dtype=torch.float64)
    for batch in iterate_batches(dataset, batch_size):
        feats, labels, slice_pred = judge_images(model, batch["image"], autocast)
        features.append(feats)
        fractions.append(tissue_fractions(labels))
        slices.append(slice_pred)
        truth_slices.append(batch["slice"])
        if "mask" in batch:
            batch_overlap, batch_totals = tissue_overlap(labels, batch["mask"])
            overlap += batch_overlap
            totals += batch_totals
    truth = torch.cat(truth_slices)
    predicted_slices = torch.cat(slices)
    dice = dice_per_tissue(overlap, totals) if dataset.with_masks else None
    known = truth >= 0
    slice_error = float((predicted_slices[known] - truth[known]).abs().float().mean()) if known.any() else None
    return JudgeScores(torch.cat(features), torch.cat(fractions), predicted_slices, dice, slice_error)


# ----------------------------------------------------------------------------- training
class JudgeTask(SliceTask):
    """Trains the judge on the train split's images, masks and slice indices; validates Dice and slice error."""

    stage = "judge"
    best_metric = "val_dice_mean"
    best_mode = "max"

    def build_model(self) -> nn.Module:
        return Judge(self.config.judge)

    def load_batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = self.train_set.__getitems__(indices)
        return {"image": batch["image"], "mask": batch["mask"], "slice": batch["slice"]}

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        output = model(batch["image"])
        segmentation = F.cross_entropy(output.segmentation.float(), batch["mask"])
        slice_loss = F.cross_entropy(output.slice_logits.float(), batch["slice"])
        loss = segmentation + self.config.judge.slice_weight * slice_loss
        logs = {"loss": loss.item(), "segmentation_loss": segmentation.item(), "slice_loss": slice_loss.item()}
        return StepOutput(loss, logs)

    @torch.no_grad()
    def validation_statistics(self, model: nn.Module, indices: list[int]) -> dict[str, torch.Tensor]:
        """Per tissue: overlap and size sums (for Dice over the whole split); slice error sum and count."""
        assert self.val_set is not None
        was_training = model.training
        model.eval()
        overlap, totals = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        slice_error = torch.zeros(2, dtype=torch.float64)
        autocast = autocast_dtype(self.config.fabric.precision)
        for batch in iterate_batches(self.val_set, self.train_config.val_batch_size, indices):
            _, labels, predicted = judge_images(model, batch["image"], autocast)  # type: ignore[arg-type]
            batch_overlap, batch_totals = tissue_overlap(labels, batch["mask"])
            overlap += batch_overlap
            totals += batch_totals
            slice_error += torch.tensor([float((predicted - batch["slice"]).abs().sum()), len(predicted)])
        model.train(was_training)
        return {"overlap": overlap, "totals": totals, "slice_error": slice_error}

    def validation_metrics(self, statistics: dict[str, torch.Tensor]) -> dict[str, float]:
        result = {
            f"val_dice_{k}": v for k, v in dice_per_tissue(statistics["overlap"], statistics["totals"]).items()
        }
        total, count = statistics["slice_error"].tolist()
        result["val_slice_error"] = total / max(count, 1)
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"image_size": list(self.train_set.image_size)}


def _masked_split(root: str | Path, split: str, **kwargs: Any) -> SliceDataset:
    scan = scan_split(root, split)
    if not scan.has_masks:
        raise DataError(
            f"{scan.folder}: split '{split}' has no tissue masks (keras_png_slices_seg_{split}); "
            "train-judge needs them"
        )
    return load_split(root, split, with_masks=True, **kwargs)


def train_judge(
    config: Config, out: str | Path, *, resume: bool = False, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume) a judge in folder ``out`` on ``config.data.root``; writes ``out/judge.json``."""
    if config.data.root is None:
        raise DataError("no data given (--data DATA)")
    run = RunDir(out)
    train_set = _masked_split(config.data.root, config.data.train_split, limit_images=config.data.limit_images)
    val_set = None
    if config.data.val_split:
        val_set = _masked_split(config.data.root, config.data.val_split, limit_images=config.data.val_limit_images)
    size = train_set.image_size
    divisor = 2 ** (config.judge.depth - 1)
    if size[0] % divisor or size[1] % divisor:
        raise DataError(
            f"{train_set.records[0].path}: a judge of depth {config.judge.depth} needs image sides divisible "
            f"by {divisor}, got {size[1]}x{size[0]}"
        )
    if train_set.slice_indices().min() < 0 or train_set.slice_indices().max() >= config.judge.num_slices:
        raise DataError(
            f"{train_set.records[0].path}: the judge needs slice indices 0..{config.judge.num_slices - 1}"
        )
    fabric_config_check(config)
    if is_main_process():
        run.prepare_stage("judge", resume=resume, force=force)
    fabric = make_fabric(config.fabric, stage_loggers(run, "judge"))
    if fabric.is_global_zero:
        from brainvq.config import save_config

        save_config(config, run.config)
    task = JudgeTask(config, config.judge_train, train_set, val_set)
    summary = launch_task(fabric, task, run, resume, progress, {"image_size": list(size)})
    if is_main_process():
        path = stage_checkpoint(run, "judge")
        record = {
            "hash": load_judge(run.root, "cpu").hash,
            "checkpoint": path.name,
            "image_size": list(size),
            "num_slices": config.judge.num_slices,
            "data": str(config.data.root),
            "steps": summary.get("steps"),
            "validation": summary.get("last"),
        }
        atomic_write_json(run.root / "judge.json", record)
        summary["judge_hash"] = record["hash"]
    return summary


# ----------------------------------------------------------------------------- using a judge
@dataclass
class LoadedJudge:
    """A trained judge, ready to score images (see :func:`load_judge`)."""

    model: Judge
    hash: str
    image_size: tuple[int, int]
    device: torch.device
    precision: str

    @property
    def autocast(self) -> torch.dtype | None:
        return autocast_dtype(self.precision)

    def check_size(self, size: tuple[int, int], where: str | Path) -> None:
        if tuple(size) != tuple(self.image_size):
            raise DataError(
                f"{where}: images are {size[1]}x{size[0]} but the judge was trained on "
                f"{self.image_size[1]}x{self.image_size[0]} images"
            )


def weights_hash(model: nn.Module, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``model``'s weights (each state-dict entry's
    name, dtype, shape and bytes, in order). Unlike a hash of the checkpoint file it ignores what
    else a checkpoint holds (elapsed time, optimiser state), so equal weights give equal hashes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]


def load_judge(path: str | Path, device: str | torch.device = "auto") -> LoadedJudge:
    """Load ``JUDGE/`` (its best checkpoint, else its last), on the GPU when one is visible."""
    run = RunDir(path)
    if not run.has_stage("judge"):
        raise RunError(f"{run.root}: no trained judge here (run `brainvq train-judge --out {run.root}`)")
    checkpoint_path = stage_checkpoint(run, "judge")
    state = load_checkpoint(checkpoint_path)
    config = config_from_dict(state["config"])
    model = Judge(config.judge)
    load_module_state(model, checkpoint_path, state)
    device = resolve_device(device)
    size = tuple(state.get("task", {}).get("image_size") or ())
    if not size:
        raise RunError(f"{checkpoint_path}: judge checkpoint does not record its image size")
    model = model.to(device).eval()
    return LoadedJudge(
        model, weights_hash(model), (int(size[0]), int(size[1])), device, inference_precision(device)
    )


def segment_folder(judge: LoadedJudge, in_dir: str | Path, out_dir: str | Path, batch_size: int = 32) -> int:
    """Write the judge's tissue masks (0/85/170/255) for every PNG in ``in_dir`` to ``out_dir``, same names."""
    dataset = load_split(in_dir, "all", in_memory=False)
    judge.check_size(dataset.image_size, in_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for batch in iterate_batches(dataset, batch_size):
        _, labels, _ = judge_images(judge.model, batch["image"], judge.autocast)
        for index, label in zip(batch["index"].tolist(), labels, strict=True):
            name = dataset.records[index].path.name
            atomic_save_image(out / name, Image.fromarray(MASK_LEVELS[label.numpy()], mode="L"))
            written += 1
    return written
