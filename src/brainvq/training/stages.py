"""Training entry points: ``train_vqvae`` and ``train_prior`` (both levels), and resuming a stage
with the run's own config. The loop is :mod:`brainvq.training.engine`; the tasks are :mod:`brainvq.training.tasks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainvq.codes import CodeMaps
from brainvq.config import (
    Config,
    save_config,
)
from brainvq.data.dataset import SliceDataset, check_no_leak, load_split
from brainvq.devices import (
    is_main_process,
)
from brainvq.errors import DataError, RunError
from brainvq.runs import RunDir, file_hash, stage_checkpoint
from brainvq.training.launch import fabric_config_check, launch_task, make_fabric, stage_loggers
from brainvq.training.resume import (
    _check_resume,
    config_from_checkpoint,
)
from brainvq.training.tasks import PRIOR_STAGES, PriorTask, VQVAETask


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
    _check_divisible(config, train_set)
    return train_set, val_set


def _check_divisible(config: Config, train_set: SliceDataset) -> None:
    """The encoder halves the image log2(factor) times: both sides must divide by the factor."""
    factor = config.model.downsample * (config.model.top_downsample if config.model.levels == 2 else 1)
    height, width = train_set.image_size
    if height % factor or width % factor:
        raise DataError(
            f"{train_set.records[0].path}: images are {width}x{height}, but this model needs sides divisible by "
            f"{factor} (model.downsample{' x model.top_downsample' if config.model.levels == 2 else ''}); "
            f"pad or resize them (slice-volumes --size), e.g. to {width // factor * factor + factor}"
        )


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
        store_template(run, config, train_set)
    task = VQVAETask(config, config.train, train_set, val_set)
    return launch_task(fabric, task, run, resume, progress, {"image_size": list(train_set.image_size)})


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

    ``level``: ``all`` (default: the one prior of a one-level run; the top, the reversed-order top and
    the bottom prior of a two-level run), ``top``, ``top_reversed``, ``bottom`` or ``stack``. The code maps must come from the run's current VQ-VAE
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


def run_prior_levels(run_root: str | Path, level: str, config: Config | None = None) -> list[str]:
    """The prior levels ``--level`` names for the run's trained VQ-VAE, top before bottom; ``config``'s
    ``top_prior_train.reversed_prior`` (else the VQ-VAE's config's) says whether ``all`` includes the
    reversed-order top prior."""
    run = RunDir(run_root)
    if not run.has_stage("vqvae"):
        raise RunError(f"{run.root}: no trained VQ-VAE (run `brainvq train-vqvae` first)")
    made_with = config_from_checkpoint(stage_checkpoint(run, "vqvae"))
    if config is not None:
        made_with.top_prior_train = config.top_prior_train
    return prior_levels(made_with, level)


def prior_levels(config: Config, level: str) -> list[str]:
    """The levels ``--level`` names for this run's VQ-VAE, top before bottom."""
    level = level.replace("-", "_")
    if level not in ("all", "top", "bottom", "top_reversed", "stack"):
        raise RunError(f"--level must be all, top, bottom, top-reversed or stack, got {level!r}")
    if config.model.levels == 1:
        if level != "all" and level != "bottom":
            raise RunError(f"this run's VQ-VAE has one level: there is no {level} prior (use --level all)")
        return ["bottom"]
    # all: the top prior, the reversed-order top prior (the default anomaly method reads the top map in both
    # orders; 5.5 minutes on a 2-core CPU) unless top_prior_train.reversed_prior is off, then the bottom prior
    reversed_level = ["top_reversed"] if config.top_prior_train.reversed_prior else []
    return ["top", *reversed_level, "bottom"] if level == "all" else [level]


def _train_prior_level(
    config: Config, run: RunDir, vqvae_path: Path, level: str, resume: bool, force: bool, progress: bool
) -> dict[str, Any]:
    vqvae_hash = file_hash(vqvae_path)
    stage = PRIOR_STAGES[level]
    train_path = run.code_file(config.data.train_split)
    train_codes = CodeMaps.load(train_path).check_made_by(vqvae_hash, train_path)
    _fill_code_shapes(config, train_codes)
    if level == "stack":  # the top prior's architecture, reading the previous slice's top map
        config.top_prior.context_num_embeddings = config.model.top_num_embeddings + 1
        config.top_prior.context_factor = 1
    _check_resume(run, stage, config, resume)
    val_path = run.code_file(config.data.val_split) if config.data.val_split else None
    val_codes = None
    if val_path is not None and val_path.is_file():
        val_codes = CodeMaps.load(val_path).check_made_by(vqvae_hash, val_path)
    fabric_config_check(config)
    train_config = config.top_prior_train if level != "bottom" else config.prior_train
    task = PriorTask(config, train_config, train_codes, val_codes, level)
    if is_main_process():
        run.prepare_stage(stage, resume=resume, force=force)
    fabric = make_fabric(config.fabric, stage_loggers(run, stage))
    if fabric.is_global_zero and level != "stack":  # the run's top_prior section stays the top prior's
        save_config(config, run.config)
    return launch_task(fabric, task, run, resume, progress, {"vqvae_hash": vqvae_hash, "level": level})


def _fill_code_shapes(config: Config, codes: CodeMaps) -> None:
    """Write the code-map sizes (and, for two levels, the bottom prior's context) into the prior configs."""
    config.prior.code_height, config.prior.code_width = (int(n) for n in codes.indices.shape[1:])
    if codes.top_indices is not None:
        config.top_prior.code_height, config.top_prior.code_width = (int(n) for n in codes.top_indices.shape[1:])
        config.prior.context_num_embeddings = config.model.top_num_embeddings
        config.prior.context_factor = config.model.top_downsample


def store_template(run: RunDir, config: Config, train_set: SliceDataset) -> None:
    """``RUN/template.npz``: the training split's mean slice stack, which ``brainvq conform --like RUN``
    registers scans to (OASIS layout only: a plain folder has no slice indices)."""
    from brainvq.conform.template import TEMPLATE_FILE, build_template, data_hash, template_from_dataset
    from brainvq.data.layout import is_oasis_root

    root = config.data.root
    if root is None or not is_oasis_root(Path(root)) or any(r.slice_index < 0 for r in train_set.records):
        return
    split = config.data.train_split
    if config.data.limit_images is None and config.data.limit_subjects is None:
        template = template_from_dataset(train_set, data_hash(root, split))
    else:  # trained on a subset: the template is the whole split's, read from disk
        template = build_template(root, split)
    template.save(run.root / TEMPLATE_FILE)
