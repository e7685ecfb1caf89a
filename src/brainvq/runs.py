"""Run directories and atomic writes.

A run directory holds everything one experiment produces::

    RUN/config.yaml          resolved config
    RUN/checkpoints/         vqvae-last.ckpt, vqvae-best.ckpt, prior-last.ckpt, prior-best.ckpt
    RUN/codes/               code maps per split (train.pt, validate.pt, ...)
    RUN/logs/                CSV and TensorBoard logs per stage
    RUN/metrics/             JSON metrics (evaluation, sampling speed)
    RUN/figures/             PNG figures
    RUN/snapshots/           reconstructions saved during training
    RUN/samples/             generated slices
    RUN/report.html          the self-contained report

Every file is written to a temporary name and renamed, so nothing half-written looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brainvq.errors import RunError


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename."""

    def write(tmp: Path) -> None:
        tmp.write_text(text)

    _atomic(Path(path), write)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` to a temporary file, then rename (never a half-written checkpoint)."""
    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_save_figure(path: Path, figure: Any, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically as PNG."""
    _atomic(Path(path), lambda tmp: figure.savefig(tmp, format="png", **kwargs))


def atomic_save_image(path: Path, image: Any) -> None:
    """Save a PIL image atomically as PNG."""
    _atomic(Path(path), lambda tmp: image.save(tmp, format="PNG"))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, foreign pickle, truncated write
        raise RunError(f"{path}: not a readable brainvq checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise RunError(f"{path}: not a brainvq checkpoint (no 'config'/'model' entries)")
    return state


class RunDir:
    """Paths inside one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def codes(self) -> Path:
        return self.root / "codes"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def checkpoint(self, stage: str, which: str = "last") -> Path:
        """``checkpoints/{stage}-{which}.ckpt`` for stage ``vqvae`` or ``prior``."""
        return self.checkpoints / f"{stage}-{which}.ckpt"

    def code_file(self, split: str) -> Path:
        return self.codes / f"{split}.pt"

    def has_stage(self, stage: str) -> bool:
        return self.checkpoint(stage, "last").is_file()

    def prepare_stage(self, stage: str, *, resume: bool, force: bool) -> None:
        """Refuse to overwrite a finished or started stage unless ``resume`` or ``force`` is given."""
        existing = self.checkpoint(stage, "last")
        if existing.exists() and not (resume or force):
            raise RunError(
                f"{self.root}: already holds a {stage} checkpoint ({existing.name}); "
                "pass --resume to continue it or --force to start over"
            )
        if force and not resume:
            stale = [stage, "prior"] if stage == "vqvae" else [stage]
            for name in stale:
                for which in ("last", "best"):
                    self.checkpoint(name, which).unlink(missing_ok=True)
                for kind in ("csv", "tensorboard"):
                    shutil.rmtree(self.logs / kind / name, ignore_errors=True)
            if stage == "vqvae":
                shutil.rmtree(self.snapshots, ignore_errors=True)
                shutil.rmtree(self.codes, ignore_errors=True)
        for folder in (self.checkpoints, self.logs, self.metrics, self.figures):
            folder.mkdir(parents=True, exist_ok=True)


@dataclass
class LoadedRun:
    """A run's config and models, ready to encode, decode and sample (see :func:`load_run`)."""

    root: RunDir
    config: Any  # brainvq.config.Config
    vqvae: Any  # brainvq.models.VQVAE, eval mode
    prior: Any | None  # brainvq.models.PixelCNN | GatedPixelCNN, eval mode, or None before train-prior
    image_size: tuple[int, int]

    @property
    def code_shape(self) -> tuple[int, int]:
        return self.vqvae.code_shape(self.image_size)


def stage_checkpoint(run: RunDir, stage: str) -> Path:
    """The checkpoint later stages use: ``best`` when it exists, else ``last``."""
    best = run.checkpoint(stage, "best")
    return best if best.is_file() else run.checkpoint(stage, "last")


def _load_module(module: torch.nn.Module, path: Path, state: dict[str, Any]) -> None:
    try:
        module.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise RunError(f"{path}: checkpoint does not match its own config ({first})") from None


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run directory: its config, VQ-VAE and (when trained) prior, rebuilt from checkpoints alone.

    >>> run = load_run("runs/demo")                       # doctest: +SKIP
    >>> result = brainvq.sample(run, 16, seed=0)          # doctest: +SKIP
    """
    from brainvq.config import config_from_dict
    from brainvq.models import VQVAE, build_prior

    run = RunDir(path)
    if not run.root.is_dir():
        raise RunError(f"{run.root}: run directory does not exist")
    if not run.has_stage("vqvae"):
        raise RunError(f"{run.root}: no trained VQ-VAE in this run (checkpoints/vqvae-last.ckpt missing)")
    vqvae_path = stage_checkpoint(run, "vqvae")
    state = load_checkpoint(vqvae_path)
    config = config_from_dict(state["config"])
    vqvae = VQVAE(config.model)
    _load_module(vqvae, vqvae_path, state)
    image_size = tuple(state.get("image_size") or _image_size(state))
    prior = None
    if run.has_stage("prior"):
        prior_path = stage_checkpoint(run, "prior")
        prior_state = load_checkpoint(prior_path)
        prior_config = config_from_dict(prior_state["config"])
        if prior_config.model.num_embeddings != config.model.num_embeddings:
            raise RunError(
                f"{prior_path}: prior has {prior_config.model.num_embeddings} codes, the VQ-VAE "
                f"{config.model.num_embeddings}"
            )
        prior = build_prior(prior_config.prior, config.model.num_embeddings)
        _load_module(prior, prior_path, prior_state)
        config.prior, config.prior_train = prior_config.prior, prior_config.prior_train
        prior = prior.to(device).eval()
    if config.fabric.channels_last:
        vqvae = vqvae.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return LoadedRun(run, config, vqvae.to(device).eval(), prior, image_size)


def _image_size(state: dict[str, Any]) -> tuple[int, int]:
    size = state.get("task", {}).get("image_size")
    if size is None:
        raise RunError("checkpoint does not record the image size")
    return int(size[0]), int(size[1])
