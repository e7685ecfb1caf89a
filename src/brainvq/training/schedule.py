"""The order of batches (deterministic, resumable, sharded across ranks), the learning-rate schedule and the
weight average's update."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch


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


def warm_ema(decay: float) -> Any:
    """An ``AveragedModel`` update: the plain mean of the weights seen so far until that is shorter
    than the EMA's memory (n < 1 / (1 - decay)), then the EMA of ``decay``; so a short run averages
    its own steps instead of keeping its first ones (as TensorFlow's ``num_updates`` does)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], count: torch.Tensor) -> None:
        weight = max(1.0 - decay, 1.0 / (int(count) + 1))  # count weights averaged before this one
        torch._foreach_lerp_(averaged, current, weight)

    return update
