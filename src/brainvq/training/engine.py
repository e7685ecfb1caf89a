"""The training engine: one short loop on Lightning Fabric, shared by every stage that trains.

Fabric owns devices, DDP (several GPUs or nodes, via torchrun or SLURM; gloo on CPU), mixed
precision and loggers; this module owns the loop, which reads top to bottom:

    for each epoch: for each batch: forward -> NaN guard -> backward -> step -> log -> checkpoint
                    then validate -> best checkpoint -> history -> snapshots

What is trained is a :class:`Task` (the VQ-VAE's and the priors' in :mod:`brainvq.training.tasks`, the
judge's in :mod:`brainvq.evaluation.judge`). Checkpoints (``last`` and ``best``) hold the model, optimiser,
scheduler, loop position and RNG state, are written atomically, and load with
``weights_only=True``. With ``weight_ema_decay`` the checkpoint's ``model`` is the moving average of
the weights (what validation scored and later stages load) and ``training_model`` the raw weights. ``resume`` continues exactly where a run stopped: same step, same batch
order, same codebook, same random numbers.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import torch
from lightning.fabric import Fabric
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from brainvq.errors import BrainVQError, RunError, TrainingError
from brainvq.runs import RunDir, atomic_torch_save, atomic_write_json, load_checkpoint
from brainvq.training.schedule import EpochBatches, lr_factor, warm_ema
from brainvq.training.task import LoopState, StepOutput, Task

CHECKPOINT_FORMAT = "brainvq-checkpoint-v1"


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
        self.average: AveragedModel | None = None

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
        if train.weight_ema_decay:  # buffers (masks, caches) follow the model; only weights are averaged
            self.average = AveragedModel(self.model, multi_avg_fn=warm_ema(train.weight_ema_decay))
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
        if self.average is not None:
            self.average.update_parameters(self.model)
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

    def evaluated_model(self) -> nn.Module:
        """What validation scores and checkpoints hold as ``model``: the weights' moving average
        when ``weight_ema_decay`` is on, else the trained weights themselves."""
        return self.average.module if self.average is not None else self.model

    def _validate(self) -> dict[str, float]:
        """Each rank validates its shard (every world_size-th item) on the unwrapped model; the additive
        statistics are summed over ranks, so the metrics are exact and every rank holds the same."""
        size = self.task.validation_size()
        if size == 0:
            return {}
        fabric = self.fabric
        shard = list(range(fabric.global_rank, size, fabric.world_size))
        statistics = self.task.validation_statistics(self.evaluated_model(), shard)
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
        self._agreed(
            lambda: self.task.on_validated(
                self.evaluated_model(), self.fabric, self.run, state.epoch if not partial else state.epoch + 1
            ),
            "a snapshot",
        )
        value = metrics.get(self.task.best_metric)
        if value is not None and math.isfinite(value):
            better = state.best is None or (
                value > state.best if self.task.best_mode == "max" else value < state.best
            )
            if better:
                state.best = value
                self._save("best")
        history = self.run.metrics / f"{self.task.stage}_history.json"
        self._agreed(
            lambda: (
                atomic_write_json(history, {"epochs": state.history, "steps": state.step_log})
                if self.fabric.is_global_zero
                else None
            ),
            str(history),
        )
        if self.progress and self.fabric.is_global_zero:
            shown = {k: round(v, 4) for k, v in metrics.items() if k not in ("partial_epoch",)}
            tqdm.write(f"[{self.task.stage}] {shown}")

    def _agreed(self, action: Callable[[], None], what: str) -> None:
        """Run work that only rank 0 does (writing checkpoints, snapshots, history) on every rank, and
        agree on whether it failed: a full disk or a refused save on rank 0 stops every rank, instead of
        leaving the others waiting in the next all-reduce. An OSError becomes one clear line."""
        error: Exception | None = None
        try:
            action()
        except (BrainVQError, OSError) as caught:
            error = caught
        if self._agree(int(error is not None)):
            if isinstance(error, BrainVQError):
                raise error
            if error is not None:
                raise TrainingError(f"{self.task.stage}: could not write {what} ({error})") from None
            raise TrainingError(f"{self.task.stage}: rank 0 could not write {what}; every rank stopped with it")

    def _save(self, which: str) -> None:
        self._agreed(lambda: self._write_checkpoint(which), f"the {which} checkpoint")

    def _write_checkpoint(self, which: str) -> None:
        if not self.fabric.is_global_zero:
            return
        weights = self.evaluated_model().state_dict()
        for name, tensor in weights.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise TrainingError(
                    f"{self.task.stage}: weight {name} is not finite; refusing to save it as {which}"
                )
        checkpoint = {
            **self.task.provenance(),
            "format": CHECKPOINT_FORMAT,
            "stage": self.task.stage,
            "config": self.task.config.to_dict(),
            "model": weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loop": asdict(self.state),
            "task": self.task.state_dict(),
            "precision": self.fabric.strategy.precision.state_dict(),  # the 16-mixed gradient scaler's state
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }
        if self.average is not None:
            checkpoint["training_model"] = self.model.state_dict()
            checkpoint["average_count"] = int(self.average.n_averaged)
        atomic_torch_save(self.run.checkpoint(self.task.stage, which), checkpoint)

    def _apply_optimiser_settings(self) -> None:
        """After a restore, the config's learning rate and weight decay, not the checkpoint's: a
        resume with ``--set train.lr=X`` trains at X (the schedule's factor at this step applied)."""
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler.base_lrs = [self.train.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.train.lr
            group["lr"] = self.train.lr * factor
            group["weight_decay"] = self.train.weight_decay

    def _restore(self) -> None:
        path = self.run.checkpoint(self.task.stage, "last")
        checkpoint = load_checkpoint(path)
        try:
            self.model.load_state_dict(checkpoint.get("training_model", checkpoint["model"]))
            if self.average is not None and "training_model" in checkpoint:  # else it starts at this step
                self.average.module.load_state_dict(checkpoint["model"])
                self.average.n_averaged.fill_(checkpoint["average_count"])
        except RuntimeError as error:
            raise RunError(f"{path}: checkpoint does not match the configured model ({error})") from None
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self._apply_optimiser_settings()
        if "precision" in checkpoint:  # the 16-mixed gradient scaler's scale and growth tracker
            self.fabric.strategy.precision.load_state_dict(checkpoint["precision"])
        self.state = LoopState(**checkpoint["loop"])
        self.state.stop_reason = ""
        self.task.load_state_dict(checkpoint["task"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if checkpoint["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
