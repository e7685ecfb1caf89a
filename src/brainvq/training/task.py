"""What the engine trains (:class:`Task`), what one step returns, and where the loop stands (saved in every checkpoint)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.fabric import Fabric
from torch import nn

from brainvq.config import (
    Config,
    TrainConfig,
)
from brainvq.runs import RunDir


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
