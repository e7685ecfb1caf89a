"""Starting a stage on Lightning Fabric: devices, precision and loggers, one process or several (DDP), and
the summary the stage returns."""

from __future__ import annotations

from typing import Any

from lightning.fabric import Fabric
from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

from brainvq.config import (
    Config,
    FabricConfig,
)
from brainvq.devices import (
    resolve_accelerator,
    resolve_precision,
)
from brainvq.runs import RunDir
from brainvq.training.engine import Engine
from brainvq.training.task import Task


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


# ----------------------------------------------------------------------------- launching
def stage_loggers(run: RunDir, stage: str) -> list[Any]:
    return [
        CSVLogger(root_dir=str(run.logs / "csv"), name=stage),
        TensorBoardLogger(root_dir=str(run.logs / "tensorboard"), name=stage),
    ]


def fabric_config_check(config: Config) -> None:
    """Fail early (before touching a run) on an accelerator this machine does not have."""
    resolve_accelerator(config.fabric.accelerator)


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
