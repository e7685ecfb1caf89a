"""Resuming a stage with the run's own config: its last checkpoint's config, then only the keys the user
gave on purpose, each reported; the architecture never changes on resume."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brainvq.config import (
    Config,
    apply_overrides,
    config_from_dict,
    load_config,
    merge_dicts,
)
from brainvq.errors import RunError
from brainvq.runs import RunDir, load_checkpoint


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
        data = merge_dicts(data, _yaml_sections(config_file))
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
    section = {"vqvae": "model", "prior": "prior"}.get(stage, "top_prior")  # prior_top, _top_reversed, _stack
    if getattr(saved, section) != getattr(config, section):
        raise RunError(
            f"{path}: the {section} config differs from the checkpoint's; resume with the run's own config "
            f"(`brainvq train-{stage} --run {run.root} --resume`)"
        )


def config_from_checkpoint(path: Path) -> Config:
    return config_from_dict(load_checkpoint(path)["config"])


def stage_config(
    run_root: str | Path,
    stage: str,
    *,
    resume: bool,
    config_file: str | Path | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    data: str | Path | None = None,
    log: Any = None,
) -> Config:
    """The config a training command runs with.

    A new stage: defaults (or ``preset``), then ``config_file``, ``overrides`` and ``data``. A new stage
    of an existing run (its first prior, or ``--force``) without a config file or preset: the run's saved
    ``config.yaml`` in place of the defaults, so the preset the run was made with still holds (budgets,
    prior architecture) and ``overrides`` change only what they name. A resumed stage: the run's own
    saved config, then only the keys the user gave on purpose, each reported through ``log``, so a resume
    never silently falls back to defaults.
    """
    from brainvq.config import find_preset

    say = log or (lambda message: None)
    saved = RunDir(run_root).config
    if not resume:
        if config_file is not None or preset or not saved.is_file():
            path = config_file or (find_preset(preset) if preset else None)
            config = load_config(path, list(overrides))
        else:
            config = load_config(saved, list(overrides))
            say(f"[{stage}] starting from the run's saved config ({saved})")
        if data is not None:
            config.data.root = str(data)  # a path, never parsed as YAML (a folder named 2024 or yes)
        return config
    config, changed = resumed_config(run_root, stage, overrides, config_file)
    if data is not None and str(data) != config.data.root:
        changed.append(f"data.root: {config.data.root!r} -> {str(data)!r}")
        config.data.root = str(data)
    note = "; overridden: " + ", ".join(changed) if changed else " (nothing overridden)"
    say(f"[{stage}] resuming with the run's saved config{note}")
    return config
