"""The training engine: one short loop on Lightning Fabric, shared by the VQ-VAE and the prior.

Fabric owns devices, DDP (several GPUs or nodes, via torchrun or SLURM; gloo on CPU), mixed
precision and loggers; this module owns the loop, which reads top to bottom:

    for each epoch: for each batch: forward -> NaN guard -> backward -> step -> log -> checkpoint
                    then validate -> best checkpoint -> history -> snapshots

Checkpoints (``last`` and ``best``) hold the model, optimiser, scheduler, loop position and RNG
state, are written atomically, and load with ``weights_only=True``. ``resume`` continues exactly
where a run stopped: same step, same batch order, same codebook, same random numbers.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from lightning.fabric.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from tqdm import tqdm

from brainvq.codes import CodeMaps, slice_condition
from brainvq.config import (
    Config,
    FabricConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)
from brainvq.data import SliceDataset, check_no_leak, load_split
from brainvq.devices import (
    autocast_context,
    autocast_dtype,
    is_main_process,
    resolve_accelerator,
    resolve_precision,
)
from brainvq.errors import DataError, RunError, TrainingError
from brainvq.metrics import (
    PriorMeter,
    ReconstructionMeter,
    code_usage,
    evaluate_prior,
    evaluate_reconstructions,
    ssim_per_image,
)
from brainvq.models.pixelcnn import build_prior
from brainvq.models.vqvae import build_vqvae
from brainvq.runs import RunDir, atomic_torch_save, atomic_write_json, file_hash, load_checkpoint, stage_checkpoint

CHECKPOINT_FORMAT = "brainvq-checkpoint-v1"
SNAPSHOT_IMAGES = 4


# ----------------------------------------------------------------------------- fabric
def make_fabric(config: FabricConfig, loggers: list[Any] | None = None) -> Fabric:
    """A Fabric for ``config`` (precision ``auto`` resolved; the resolved value is written back)."""
    accelerator = resolve_accelerator(config.accelerator)
    config.precision = resolve_precision(config.precision, accelerator)
    return Fabric(
        accelerator=accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,  # type: ignore[arg-type]
        loggers=loggers,
    )


# ----------------------------------------------------------------------------- batches and state
class EpochBatches:
    """Deterministic, resumable, rank-sharded batches: epoch e uses ``randperm(n)`` seeded by
    ``seed + e``; rank r takes every world_size-th batch-sized slice; the last partial batch is dropped."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if size < batch_size * world_size:
            batch_size = max(1, size // world_size)
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        step = self.batch_size * self.world_size
        for b in range(skip, len(self)):
            start = b * step + self.rank * self.batch_size
            yield order[start : start + self.batch_size]


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float | None = None
    elapsed_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    step_log: list[list[float]] = field(default_factory=list)
    stop_reason: str = ""


@dataclass
class StepOutput:
    """A training step's loss and the scalars to log."""

    loss: torch.Tensor
    logs: dict[str, float]
    extra: Any = None


# ----------------------------------------------------------------------------- tasks
class Task(ABC):
    """What the engine trains: builds the model, turns batch indices into losses, validates."""

    stage: str
    best_metric: str
    best_mode: str  # "max" or "min"

    def __init__(self, config: Config, train: TrainConfig) -> None:
        self.config = config
        self.train_config = train

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def train_size(self) -> int: ...

    @abstractmethod
    def load_batch(self, indices: list[int]) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput: ...

    @abstractmethod
    def validation_size(self) -> int:
        """How many items the validation set holds (0: no validation)."""

    @abstractmethod
    def validation_statistics(self, model: nn.Module, indices: list[int]) -> dict[str, torch.Tensor]:
        """Additive statistics (sums, counts) over the validation items at ``indices`` (one rank's shard)."""

    @abstractmethod
    def validation_metrics(self, statistics: dict[str, torch.Tensor]) -> dict[str, float]:
        """The ``val_*`` metrics from statistics summed over every shard."""

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validation on one process (every item); the engine shards it across DDP ranks instead."""
        size = self.validation_size()
        return self.validation_metrics(self.validation_statistics(model, list(range(size)))) if size else {}

    def on_step(self, output: StepOutput) -> None:
        """Accumulate per-epoch statistics (default: nothing)."""

    def epoch_metrics(self) -> dict[str, float]:
        """Training statistics of the finished epoch (default: none)."""
        return {}

    def on_validated(self, model: nn.Module, fabric: Fabric, run: RunDir, epoch: int) -> None:
        """Save per-epoch artefacts such as reconstruction snapshots (default: nothing)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def provenance(self) -> dict[str, Any]:
        """Top-level checkpoint entries saying what this stage was trained on (default: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""


def reconstruction_loss(
    kind: str, prediction: torch.Tensor, recon: torch.Tensor, target: torch.Tensor, ssim_weight: float
) -> torch.Tensor:
    """``mse`` (default), ``l1`` or ``mse+ssim`` (MSE + w * (1 - SSIM), as the seed's driver did).

    ``prediction`` is what the pixel losses see (the unclamped decoder output with ``output=clamp``),
    ``recon`` the image in [0, 1] that SSIM sees.
    """
    prediction = prediction.float()
    if kind == "mse":
        return F.mse_loss(prediction, target)
    if kind == "l1":
        return F.l1_loss(prediction, target)
    if kind == "mse+ssim":
        return F.mse_loss(prediction, target) + ssim_weight * (1 - ssim_per_image(recon, target).mean())
    raise ValueError(f"train.recon_loss must be 'mse', 'l1' or 'mse+ssim', got {kind!r}")


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
            self.train_config.recon_loss, prediction, output.recon, images, self.train_config.ssim_weight
        )
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
    conditioned on its top map; stage ``prior``) or ``top`` (the top map; stage ``prior_top``,
    configured by ``top_prior`` and ``top_prior_train``).
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
        self.prior_config = config.top_prior if level == "top" else config.prior
        self.train_codes = train_codes.level(level)
        self.val_codes = val_codes.level(level) if val_codes is not None else None
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
        logits = model(batch["codes"], self._condition(batch), batch.get("context"))
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


PRIOR_STAGES = {"bottom": "prior", "top": "prior_top"}  # level -> stage (checkpoint and log names)


# ----------------------------------------------------------------------------- the loop
def lr_factor(schedule: str, warmup_steps: int, total_steps: int | None) -> Any:
    """A LambdaLR factor: linear warmup, then ``constant`` or ``cosine`` (needs a step budget)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine" and total_steps:
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * progress))
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"train.schedule must be 'constant' or 'cosine', got {schedule!r}")
        return 1.0

    return factor


STOP_REASONS = ("", "steps", "epochs", "minutes", "interrupted")


class Engine:
    """Runs one task to a stop condition, with checkpoints, logs, history and a progress bar.

    Stops happen only at step boundaries: a Ctrl-C (SIGINT) or a scheduler's SIGTERM sets a flag
    that the loop reads before the next step, so the ``last`` checkpoint is always a state that a
    step left complete. Every stop decision (steps, epochs, time budget, signal, non-finite loss
    or gradients) is agreed by all DDP ranks with an all-reduce, so ranks never stop apart.
    """

    def __init__(self, task: Task, fabric: Fabric, run: RunDir, *, resume: bool, progress: bool = True) -> None:
        self.task, self.fabric, self.run, self.resume = task, fabric, run, resume
        self.train = task.train_config
        self.progress = progress
        self.state = LoopState()
        self.signalled = False

    def fit(self) -> LoopState:
        fabric, train = self.fabric, self.train
        fabric.seed_everything(train.seed, verbose=False)
        self.model = self.task.build_model()
        if self.task.config.fabric.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        optimizer = torch.optim.Adam(self.model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        total = train.max_steps or (train.epochs * self._batches().__len__() if train.epochs else None)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_factor(train.schedule, train.warmup_steps, total)
        )
        wrapped, optimizer = fabric.setup(self.model, optimizer)
        self.optimizer, self.scheduler = optimizer, scheduler
        if self.resume:
            self._restore()
        try:
            with self._signals_as_flag():
                self._loop(wrapped)
        finally:
            for logger in fabric.loggers:
                logger.finalize("success")
        if self.state.stop_reason == "interrupted":
            raise KeyboardInterrupt
        return self.state

    @contextlib.contextmanager
    def _signals_as_flag(self) -> Iterator[None]:
        """SIGINT/SIGTERM set ``self.signalled``; a second SIGINT interrupts at once (without saving)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.signalled and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signalled = True
            if self.fabric.is_global_zero:
                tqdm.write(
                    f"[{self.task.stage}] stopping after this step (signal {signum}); Ctrl-C again to abort"
                )

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _batches(self) -> EpochBatches:
        return EpochBatches(
            self.task.train_size(),
            self.train.batch_size,
            self.train.seed,
            self.fabric.global_rank,
            self.fabric.world_size,
        )

    def _agree(self, code: int) -> int:
        """The largest of every rank's ``code`` (so one rank's reason to stop stops them all)."""
        if self.fabric.world_size == 1:
            return code
        value = self.fabric.all_reduce(torch.tensor(code, device=self.fabric.device), reduce_op="max")
        return int(value.item())  # type: ignore[union-attr]

    def _stop_reason(self, deadline: float) -> str:
        train, state = self.train, self.state
        code = 0
        if self.signalled:
            code = STOP_REASONS.index("interrupted")
        elif train.max_steps is not None and state.step >= train.max_steps:
            code = STOP_REASONS.index("steps")
        elif train.epochs is not None and state.epoch >= train.epochs:
            code = STOP_REASONS.index("epochs")
        elif time.monotonic() >= deadline:
            code = STOP_REASONS.index("minutes")
        reason = STOP_REASONS[self._agree(code)]
        if reason == "minutes" and train.max_minutes:  # the budget is spent, on every rank's record
            state.elapsed_seconds = max(state.elapsed_seconds, train.max_minutes * 60)
        limits = {"steps": f"{train.max_steps} steps", "epochs": f"{train.epochs} epochs"}
        limits["minutes"] = f"{train.max_minutes} minutes"
        return limits.get(reason, reason)

    def _loop(self, model: nn.Module) -> None:
        fabric, train, state = self.fabric, self.train, self.state
        batches = self._batches()
        started = time.monotonic() - state.elapsed_seconds
        deadline = started + train.max_minutes * 60 if train.max_minutes else math.inf
        bar = tqdm(
            total=train.max_steps or (train.epochs * len(batches) if train.epochs else None),
            initial=state.step,
            desc=self.task.stage,
            disable=not (self.progress and fabric.is_global_zero),
            mininterval=2.0,
            dynamic_ncols=True,
        )
        running: list[float] = []
        validated_at = state.step if self.resume else -1
        model.train()
        while True:
            state.stop_reason = self._stop_reason(deadline)
            if state.stop_reason:
                break
            for indices in batches.epoch(state.epoch, skip=state.batch_in_epoch):
                output = self._step(model, indices)
                state.step += 1
                state.batch_in_epoch += 1
                state.elapsed_seconds = time.monotonic() - started
                running.append(output.logs["loss"])
                bar.update(1)
                bar.set_postfix(loss=f"{output.logs['loss']:.4f}", epoch=state.epoch)
                if state.step % 10 == 0:
                    state.step_log.append([state.step, sum(running) / len(running)])
                    fabric.log_dict({f"train/{k}": v for k, v in output.logs.items()}, step=state.step)
                    running.clear()
                if state.step % train.checkpoint_every_steps == 0:
                    self._save("last")
                if state.batch_in_epoch < len(batches):
                    state.stop_reason = self._stop_reason(deadline)
                    if state.stop_reason:
                        break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
                if state.epoch % max(1, train.validate_every_epochs) == 0:
                    self._end_epoch()
                    validated_at = state.step
                self._save("last")
                continue
            break
        if validated_at != state.step and state.stop_reason != "interrupted":
            self._end_epoch(partial=True)
        self._save("last")
        bar.close()

    def _step(self, model: nn.Module, indices: list[int]) -> StepOutput:
        batch = {k: self.fabric.to_device(v) for k, v in self.task.load_batch(indices).items()}
        if self.task.config.fabric.channels_last and "image" in batch:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        output = self.task.training_step(model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.fabric.backward(output.loss)
        problem = self._agree(self._non_finite(output.loss))
        if problem:
            what = "the loss" if problem == 2 else "a gradient"
            last = self.run.checkpoint(self.task.stage, "last")
            kept = f"The last good checkpoint is {last}" if last.is_file() else "No checkpoint was written yet"
            raise TrainingError(
                f"{self.task.stage}: {what} became non-finite at step {self.state.step + 1}; stopped before "
                f"the update. {kept} (try a lower train.lr, or precision=32-true)"
            )
        if self.train.grad_clip:
            self.fabric.clip_gradients(model, self.optimizer, max_norm=self.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.task.on_step(output)
        return output

    def _non_finite(self, loss: torch.Tensor) -> int:
        """0 when the loss and every gradient are finite, 2 for the loss, 1 for a gradient.

        Under ``16-mixed`` the gradient scaler skips steps with overflowing gradients by design,
        so only the loss is checked there.
        """
        if not bool(torch.isfinite(loss.detach())):
            return 2
        if self.task.config.fabric.precision.startswith("16"):
            return 0
        grads = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.stack([g.float().abs().amax() for g in grads])).all()):
            return 1
        return 0

    def _validate(self) -> dict[str, float]:
        """Each rank validates its shard (every world_size-th item) on the unwrapped model; the additive
        statistics are summed over ranks, so the metrics are exact and every rank holds the same."""
        size = self.task.validation_size()
        if size == 0:
            return {}
        fabric = self.fabric
        shard = list(range(fabric.global_rank, size, fabric.world_size))
        statistics = self.task.validation_statistics(self.model, shard)
        if fabric.world_size > 1:
            statistics = {
                key: fabric.all_reduce(value.to(fabric.device), reduce_op="sum").cpu()  # type: ignore[union-attr]
                for key, value in sorted(statistics.items())
            }
        return self.task.validation_metrics(statistics)

    def _end_epoch(self, partial: bool = False) -> None:
        state = self.state
        metrics: dict[str, float] = {
            "epoch": state.epoch,
            "step": state.step,
            "partial_epoch": float(partial),
            "minutes": state.elapsed_seconds / 60,
        }
        metrics.update(self.task.epoch_metrics())
        metrics.update(self._validate())
        state.history.append(metrics)
        self.fabric.log_dict({f"epoch/{k}": v for k, v in metrics.items()}, step=state.step)
        self.task.on_validated(self.model, self.fabric, self.run, state.epoch if not partial else state.epoch + 1)
        value = metrics.get(self.task.best_metric)
        if value is not None and math.isfinite(value):
            better = state.best is None or (
                value > state.best if self.task.best_mode == "max" else value < state.best
            )
            if better:
                state.best = value
                self._save("best")
        if self.fabric.is_global_zero:
            atomic_write_json(
                self.run.metrics / f"{self.task.stage}_history.json",
                {"epochs": state.history, "steps": state.step_log},
            )
        if self.progress and self.fabric.is_global_zero:
            shown = {k: round(v, 4) for k, v in metrics.items() if k not in ("partial_epoch",)}
            tqdm.write(f"[{self.task.stage}] {shown}")

    def _save(self, which: str) -> None:
        if not self.fabric.is_global_zero:
            return
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise TrainingError(
                    f"{self.task.stage}: weight {name} is not finite; refusing to save it as {which}"
                )
        checkpoint = {
            **self.task.provenance(),
            "format": CHECKPOINT_FORMAT,
            "stage": self.task.stage,
            "config": self.task.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loop": asdict(self.state),
            "task": self.task.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }
        atomic_torch_save(self.run.checkpoint(self.task.stage, which), checkpoint)

    def _restore(self) -> None:
        path = self.run.checkpoint(self.task.stage, "last")
        checkpoint = load_checkpoint(path)
        try:
            self.model.load_state_dict(checkpoint["model"])
        except RuntimeError as error:
            raise RunError(f"{path}: checkpoint does not match the configured model ({error})") from None
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.state = LoopState(**checkpoint["loop"])
        self.state.stop_reason = ""
        self.task.load_state_dict(checkpoint["task"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if checkpoint["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])


# ----------------------------------------------------------------------------- entry points
def stage_loggers(run: RunDir, stage: str) -> list[Any]:
    return [
        CSVLogger(root_dir=str(run.logs / "csv"), name=stage),
        TensorBoardLogger(root_dir=str(run.logs / "tensorboard"), name=stage),
    ]


def resume_checkpoint(run: RunDir, stage: str) -> Path:
    """The ``last`` checkpoint a resume continues from, or a RunError saying there is none."""
    path = run.checkpoint(stage, "last")
    if not path.is_file():
        raise RunError(f"{run.root}: nothing to resume (no {path.name})")
    return path


def resumed_config(
    run_root: str | Path, stage: str, overrides: Sequence[str] = (), config_file: str | Path | None = None
) -> tuple[Config, list[str]]:
    """The config a resumed stage runs with: the run's own saved config (from its ``last``
    checkpoint: data root, batch size, schedule, budgets...), then the keys of ``config_file`` and
    ``overrides`` that the user gave on purpose. Returns the config and one ``key: old -> new``
    line per overridden key. Architecture keys (``model.*``, ``prior.*``) cannot change.
    """
    path = resume_checkpoint(RunDir(run_root), stage)
    saved = config_from_checkpoint(path)
    data = saved.to_dict()
    if config_file is not None:
        data = _merge(data, _yaml_sections(config_file))
    config = apply_overrides(config_from_dict(data), list(overrides))
    before, after = _flatten(saved.to_dict()), _flatten(config.to_dict())
    changed = [f"{key}: {before[key]!r} -> {after[key]!r}" for key in after if after[key] != before.get(key)]
    frozen = [line for line in changed if line.startswith(("model.", "prior.", "top_prior."))]
    if frozen and not (stage == "vqvae" and all(line.startswith(("prior.", "top_prior.")) for line in frozen)):
        raise RunError(f"{path}: cannot change the architecture of a run on resume ({frozen[0]})")
    return config, changed


def _yaml_sections(path: str | Path) -> dict[str, Any]:
    import yaml

    load_config(path)  # validates the file, with errors that name it
    return dict(yaml.safe_load(Path(path).read_text()) or {})


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _check_resume(run: RunDir, stage: str, config: Config, resume: bool) -> None:
    """A resumed stage must rebuild the network its checkpoint holds."""
    if not resume:
        return
    path = resume_checkpoint(run, stage)
    saved = config_from_checkpoint(path)
    section = {"vqvae": "model", "prior": "prior", "prior_top": "top_prior"}[stage]
    if getattr(saved, section) != getattr(config, section):
        raise RunError(
            f"{path}: the {section} config differs from the checkpoint's; resume with the run's own config "
            f"(`brainvq train-{stage} --run {run.root} --resume`)"
        )


def _load_training_data(config: Config) -> tuple[SliceDataset, SliceDataset | None]:
    data_root = config.data.root
    if data_root is None:
        raise DataError("no data given (--data DATA or data.root in the config)")
    check_no_leak(data_root)
    train_set = load_split(
        data_root,
        config.data.train_split,
        in_memory=config.data.in_memory,
        limit_subjects=config.data.limit_subjects,
        limit_images=config.data.limit_images,
    )
    val_set = None
    if config.data.val_split:
        val_set = load_split(
            data_root,
            config.data.val_split,
            in_memory=config.data.in_memory,
            limit_images=config.data.val_limit_images,
        )
        if val_set.image_size != train_set.image_size:
            raise DataError(
                f"{val_set.records[0].path}: validate images are {val_set.image_size}, "
                f"train images are {train_set.image_size}"
            )
    return train_set, val_set


def train_vqvae(
    config: Config, run_root: str | Path, *, resume: bool = False, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume) the VQ-VAE of run ``run_root`` on ``config.data.root``; returns a summary.

    The data is read and checked before anything in the run is touched, so ``force`` with a
    mistyped data path fails without deleting the old run. To resume with the run's own config,
    build ``config`` with :func:`resumed_config`.
    """
    run = RunDir(run_root)
    _check_resume(run, "vqvae", config, resume)
    train_set, val_set = _load_training_data(config)
    fabric_config_check(config)
    if is_main_process():
        run.prepare_stage("vqvae", resume=resume, force=force)
    fabric = make_fabric(config.fabric, stage_loggers(run, "vqvae"))
    if fabric.is_global_zero:
        save_config(config, run.config)
    task = VQVAETask(config, config.train, train_set, val_set)
    return launch_task(fabric, task, run, resume, progress, {"image_size": list(train_set.image_size)})


def fabric_config_check(config: Config) -> None:
    """Fail early (before touching a run) on an accelerator this machine does not have."""
    resolve_accelerator(config.fabric.accelerator)


def train_prior(
    config: Config,
    run_root: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    level: str = "all",
) -> dict[str, Any]:
    """Train (or resume) the prior(s) of run ``run_root`` on its stored code maps.

    ``level``: ``all`` (default: the one prior of a one-level run; the top, then the bottom prior of
    a two-level run), ``top`` or ``bottom``. The code maps must come from the run's current VQ-VAE
    checkpoint (their recorded hash is checked); each prior's checkpoints record that hash too, so
    later stages can tell a stale prior. Returns the summary of the last level trained, with the
    summaries of both levels under ``levels`` for two-level runs.
    """
    run = RunDir(run_root)
    if not run.has_stage("vqvae"):
        raise RunError(f"{run.root}: no trained VQ-VAE (run `brainvq train-vqvae` first)")
    vqvae_path = stage_checkpoint(run, "vqvae")
    config.model = config_from_checkpoint(vqvae_path).model
    levels = prior_levels(config, level)
    summaries = {
        name: _train_prior_level(config, run, vqvae_path, name, resume, force, progress) for name in levels
    }
    summary = dict(summaries[levels[-1]])
    if config.model.levels == 2:
        summary["levels"] = summaries
    return summary


def run_prior_levels(run_root: str | Path, level: str) -> list[str]:
    """The prior levels ``--level`` names for the run's trained VQ-VAE, top before bottom."""
    run = RunDir(run_root)
    if not run.has_stage("vqvae"):
        raise RunError(f"{run.root}: no trained VQ-VAE (run `brainvq train-vqvae` first)")
    return prior_levels(config_from_checkpoint(stage_checkpoint(run, "vqvae")), level)


def prior_levels(config: Config, level: str) -> list[str]:
    """The levels ``--level`` names for this run's VQ-VAE, top before bottom."""
    if level not in ("all", "top", "bottom"):
        raise RunError(f"--level must be all, top or bottom, got {level!r}")
    if config.model.levels == 1:
        if level == "top":
            raise RunError("this run's VQ-VAE has one level: there is no top prior (use --level all)")
        return ["bottom"]
    return ["top", "bottom"] if level == "all" else [level]


def _train_prior_level(
    config: Config, run: RunDir, vqvae_path: Path, level: str, resume: bool, force: bool, progress: bool
) -> dict[str, Any]:
    vqvae_hash = file_hash(vqvae_path)
    stage = PRIOR_STAGES[level]
    train_path = run.code_file(config.data.train_split)
    train_codes = CodeMaps.load(train_path).check_made_by(vqvae_hash, train_path)
    _fill_code_shapes(config, train_codes)
    _check_resume(run, stage, config, resume)
    val_path = run.code_file(config.data.val_split) if config.data.val_split else None
    val_codes = None
    if val_path is not None and val_path.is_file():
        val_codes = CodeMaps.load(val_path).check_made_by(vqvae_hash, val_path)
    fabric_config_check(config)
    train_config = config.top_prior_train if level == "top" else config.prior_train
    task = PriorTask(config, train_config, train_codes, val_codes, level)
    if is_main_process():
        run.prepare_stage(stage, resume=resume, force=force)
    fabric = make_fabric(config.fabric, stage_loggers(run, stage))
    if fabric.is_global_zero:
        save_config(config, run.config)
    return launch_task(fabric, task, run, resume, progress, {"vqvae_hash": vqvae_hash, "level": level})


def _fill_code_shapes(config: Config, codes: CodeMaps) -> None:
    """Write the code-map sizes (and, for two levels, the bottom prior's context) into the prior configs."""
    config.prior.code_height, config.prior.code_width = (int(n) for n in codes.indices.shape[1:])
    if codes.top_indices is not None:
        config.top_prior.code_height, config.top_prior.code_width = (int(n) for n in codes.top_indices.shape[1:])
        config.prior.context_num_embeddings = config.model.top_num_embeddings
        config.prior.context_factor = config.model.top_downsample


def config_from_checkpoint(path: Path) -> Config:
    return config_from_dict(load_checkpoint(path)["config"])


def launch_task(
    fabric: Fabric, task: Task, run: RunDir, resume: bool, progress: bool, info: dict[str, Any]
) -> dict[str, Any]:
    result = fabric.launch(_fit_worker, task, run, resume, progress)  # type: ignore[arg-type]
    summary = dict(result or {})
    summary.update(info)
    return summary


def _fit_worker(fabric: Fabric, task: Task, run: RunDir, resume: bool, progress: bool) -> dict[str, Any]:
    engine = Engine(task, fabric, run, resume=resume, progress=progress)
    state = engine.fit()
    last = state.history[-1] if state.history else {}
    return {
        "stage": task.stage,
        "steps": state.step,
        "epochs": state.epoch,
        "stop_reason": state.stop_reason,
        "minutes": state.elapsed_seconds / 60,
        "best": state.best,
        "last": last,
        "precision": task.config.fabric.precision,
    }
