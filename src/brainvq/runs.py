"""Run directories and atomic writes.

A run directory holds everything one experiment produces::

    RUN/config.yaml          resolved config
    RUN/checkpoints/         vqvae-last.ckpt, vqvae-best.ckpt, prior-last.ckpt, prior-best.ckpt
                             (two-level runs: prior-* is the bottom prior, prior_top-* the top one)
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

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from brainvq.errors import RunError
from brainvq.files import (  # noqa: F401 (re-exported for the stages)
    MARKER,
    atomic_save_figure,
    atomic_save_image,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    file_hash,
    is_owned,
    mark_owned,
)

# What a run holds besides its checkpoints: everything derived from a model, which --force removes.
DERIVED = ("codes", "snapshots", "samples", "metrics", "figures", "report.html", "pipeline.json")
PRIOR_DERIVED = ("samples", "metrics/sampling.json", "report.html")  # pipeline.json: stale by hash


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

    def is_run(self) -> bool:
        """True when brainvq made this folder (its marker file; or, for older runs, a checkpoint)."""
        return is_owned(self.root) or any(self.checkpoints.glob("*.ckpt"))

    def claim(self) -> None:
        """Create the run folder, or check that an existing non-empty folder is a run; mark it."""
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"{self.root}: is a file, not a run directory")
        if self.root.is_dir() and any(self.root.iterdir()) and not self.is_run():
            raise RunError(
                f"{self.root}: exists and is not a brainvq run (no {MARKER} marker); "
                "choose a new or empty folder for the run"
            )
        mark_owned(self.root, "run")

    def prepare_stage(self, stage: str, *, resume: bool, force: bool) -> None:
        """Refuse to overwrite a finished or started stage unless ``resume`` or ``force`` is given.

        ``force`` on the VQ-VAE removes the prior and everything derived from the old model (code
        maps, metrics, samples, figures, report, pipeline record); on the prior, what came from it.
        Call this only after the stage's inputs were checked, so a typo never deletes a run.
        """
        existing = self.checkpoint(stage, "last")
        if existing.exists() and not (resume or force):
            raise RunError(
                f"{self.root}: already holds a {stage} checkpoint ({existing.name}); "
                "pass --resume to continue it or --force to start over"
            )
        self.claim()
        if force and not resume:
            stale = [stage, "prior", "prior_top"] if stage == "vqvae" else [stage]
            for name in stale:
                for which in ("last", "best"):
                    self.checkpoint(name, which).unlink(missing_ok=True)
                for kind in ("csv", "tensorboard"):
                    shutil.rmtree(self.logs / kind / name, ignore_errors=True)
            derived = {"vqvae": DERIVED, "prior": PRIOR_DERIVED, "prior_top": PRIOR_DERIVED}.get(
                stage, ("judge.json", "cache")
            )
            for name in derived:
                path = self.root / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            if stage in ("prior", "prior_top"):
                for path in self.metrics.glob("evaluate_*.json"):
                    path.unlink()
        for folder in (self.checkpoints, self.logs, self.metrics, self.figures):
            folder.mkdir(parents=True, exist_ok=True)


@dataclass
class LoadedRun:
    """A run's config and models, ready to encode, decode and sample (see :func:`load_run`)."""

    root: RunDir
    config: Any  # brainvq.config.Config
    vqvae: Any  # brainvq.models.VQVAE, eval mode
    prior: Any | None  # brainvq.models.PixelCNN | GatedPixelCNN, eval mode, or None (none yet, or stale)
    image_size: tuple[int, int]
    vqvae_hash: str = ""  # content hash of the VQ-VAE checkpoint loaded
    prior_hash: str | None = None
    prior_problem: str | None = None  # why ``prior`` is None although a prior checkpoint exists
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    top_prior: Any | None = None  # two-level runs: the transformer (or other) prior of the top map
    top_prior_hash: str | None = None
    top_prior_problem: str | None = None
    top_reversed_prior: Any | None = None  # optional: the top map read backwards (anomaly maps' second ordering)
    stack_prior: Any | None = None  # optional: slice k's top map given slice k-1's (whole stacks)

    def require_stack_prior(self) -> Any:
        """The stack prior, or a RunError saying how to train it."""
        if self.stack_prior is None:
            raise RunError(
                f"{self.root.root}: no stack prior in this run (run `brainvq train-prior --level stack`)"
            )
        return self.stack_prior

    @property
    def levels(self) -> int:
        return int(self.config.model.levels)

    def require_top_prior(self) -> Any:
        """The top map's prior of a two-level run, or a RunError saying why there is none."""
        if self.top_prior is None:
            raise RunError(
                self.top_prior_problem
                or f"{self.root.root}: this two-level run has no trained top prior (run `brainvq train-prior`)"
            )
        return self.top_prior

    @property
    def top_code_shape(self) -> tuple[int, int]:
        return self.vqvae.top_code_shape(self.image_size)

    def require_prior(self) -> Any:
        """The prior, or a RunError saying why there is none (not trained, or made for another VQ-VAE)."""
        if self.prior is None:
            raise RunError(
                self.prior_problem
                or f"{self.root.root}: this run has no trained prior (run `brainvq train-prior`)"
            )
        return self.prior

    @property
    def code_shape(self) -> tuple[int, int]:
        return self.vqvae.code_shape(self.image_size)


def stage_checkpoint(run: RunDir, stage: str) -> Path:
    """The checkpoint later stages use: ``best`` when it exists, else ``last``."""
    best = run.checkpoint(stage, "best")
    return best if best.is_file() else run.checkpoint(stage, "last")


def load_module_state(module: torch.nn.Module, path: Path, state: dict[str, Any]) -> None:
    """Load a checkpoint's weights into ``module``; a mismatch is a one-line RunError naming the file."""
    try:
        module.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise RunError(f"{path}: checkpoint does not match its own config ({first})") from None


def load_run(path: str | Path, device: str | torch.device = "auto") -> LoadedRun:
    """Load a run directory: its config, VQ-VAE and (when trained) prior, rebuilt from checkpoints alone.

    ``device="auto"`` puts the models on the GPU when one is visible, else the CPU. A prior trained
    on code maps of another VQ-VAE checkpoint (the VQ-VAE was retrained or resumed since) is not
    loaded: ``prior`` is None and ``prior_problem`` says why.

    >>> run = load_run("runs/demo")                       # doctest: +SKIP
    >>> result = brainvq.sample(run, 16, seed=0)          # doctest: +SKIP
    """
    from brainvq.config import config_from_dict
    from brainvq.devices import resolve_device
    from brainvq.models import build_vqvae

    device = resolve_device(device)
    run = RunDir(path)
    if not run.root.is_dir():
        raise RunError(f"{run.root}: run directory does not exist")
    if not run.has_stage("vqvae"):
        raise RunError(f"{run.root}: no trained VQ-VAE in this run (checkpoints/vqvae-last.ckpt missing)")
    vqvae_path = stage_checkpoint(run, "vqvae")
    state = load_checkpoint(vqvae_path)
    config = config_from_dict(state["config"])
    vqvae = build_vqvae(config.model)
    load_module_state(vqvae, vqvae_path, state)
    image_size = tuple(state.get("image_size") or _image_size(state))
    vqvae_hash = file_hash(vqvae_path)
    prior, prior_hash, prior_problem = _load_prior(run, "prior", config, vqvae_hash, device)
    top_prior, top_hash, top_problem, reversed_prior, stack_prior = None, None, None, None, None
    if config.model.levels == 2:
        top_prior, top_hash, top_problem = _load_prior(run, "prior_top", config, vqvae_hash, device)
        reversed_prior = _load_prior(run, "prior_top_reversed", config, vqvae_hash, device, keep_config=False)[0]
        stack_prior = _load_prior(run, "prior_stack", config, vqvae_hash, device, keep_config=False)[0]
    config.sample = sampling_config(run, config)
    if config.fabric.channels_last:
        vqvae = vqvae.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return LoadedRun(
        run, config, vqvae.to(device).eval(), prior, image_size, vqvae_hash, prior_hash, prior_problem, device,
        top_prior, top_hash, top_problem, reversed_prior, stack_prior,
    )  # fmt: skip


def sampling_config(run: RunDir, config: Any) -> Any:
    """The run's sampling settings, from one source: ``RUN/config.yaml`` (which every training stage
    writes, ``--set sample.*`` included, and which a user may edit), else the checkpoints' config."""
    from brainvq.config import load_config

    return load_config(run.config).sample if run.config.is_file() else config.sample


def _load_prior(
    run: RunDir, stage: str, config: Any, vqvae_hash: str, device: torch.device, keep_config: bool = True
) -> tuple[Any | None, str | None, str | None]:
    """(prior, its checkpoint hash, why it was not loaded) for stage ``prior``, ``prior_top`` or
    ``prior_top_reversed``; copies the prior's config sections into ``config`` if ``keep_config``."""
    from brainvq.config import config_from_dict
    from brainvq.models import build_prior

    if not run.has_stage(stage):
        return None, None, None
    prior_path = stage_checkpoint(run, stage)
    prior_state = load_checkpoint(prior_path)
    made_by = prior_state.get("vqvae_hash")
    if made_by != vqvae_hash:
        problem = (
            f"{prior_path}: stale prior, trained on code maps of VQ-VAE checkpoint {made_by or 'unknown'}, "
            f"but the run's VQ-VAE is now {vqvae_hash}; run `brainvq encode` and "
            "`brainvq train-prior --force` again"
        )
        return None, None, problem
    prior_config = config_from_dict(prior_state["config"])
    top = stage != "prior"
    size, saved = (
        (config.model.top_num_embeddings, prior_config.model.top_num_embeddings)
        if top
        else (config.model.num_embeddings, prior_config.model.num_embeddings)
    )
    if size != saved:
        raise RunError(f"{prior_path}: prior has {saved} codes, the VQ-VAE {size}")
    section, train_section = ("top_prior", "top_prior_train") if top else ("prior", "prior_train")
    prior = build_prior(getattr(prior_config, section), size)
    load_module_state(prior, prior_path, prior_state)
    if keep_config:
        setattr(config, section, getattr(prior_config, section))
        setattr(config, train_section, getattr(prior_config, train_section))
    return prior.to(device).eval(), file_hash(prior_path), None


def _image_size(state: dict[str, Any]) -> tuple[int, int]:
    size = state.get("task", {}).get("image_size")
    if size is None:
        raise RunError("checkpoint does not record the image size")
    return int(size[0]), int(size[1])
