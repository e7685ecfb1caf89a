"""Configs on disk and on the command line: YAML files and checkpoint dicts merged onto :class:`Config`'s
defaults, dotted ``--set`` overrides, saving, and the presets that ship with the package."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from brainvq.config.schema import Config, T
from brainvq.errors import ConfigError
from brainvq.files import atomic_write_text


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` coerced to ``hint`` (ints to floats only), or raise ConfigError."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': expected {hint}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_check_type(item, get_args(hint)[0], key) for item in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, str):
        try:
            return hint(value)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            raise ConfigError(f"config key '{key}': expected {hint.__name__}, got {value!r}") from None
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected {hint.__name__}, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"config key '{key}': expected {hint.__name__}, got {value!r}")
    return value


def _from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(typing.cast(type, hint), value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, hint, prefix + name)
    return cls(**kwargs)


# Keys that earlier versions wrote into checkpoints and that no longer exist: dropped on load.
RETIRED_KEYS = {"data": ("num_workers",), "fabric": ("compile",)}


def merge_dicts(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, mapping by mapping (neither is changed)."""
    merged = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_dicts(merged[key], value) if nested else value
    return merged


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a (possibly partial) nested dict, laid over the full
    defaults of :class:`Config`: a key the dict does not name keeps :class:`Config`'s value."""
    data = dict(data or {})
    for section, keys in RETIRED_KEYS.items():
        if isinstance(data.get(section), dict):
            data[section] = {k: v for k, v in data[section].items() if k not in keys}
    for section, value in data.items():
        if not isinstance(value, dict) and section in {f.name for f in fields(Config)}:
            raise ConfigError(f"config section '{section}' must be a mapping")
    return _from_dict(Config, merge_dicts(Config().to_dict(), data)).validate()


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    config_from_dict(data)  # validate the file on its own so errors name the file's keys
    return apply_overrides(config_from_dict(data), overrides or [])


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Return a copy of ``config`` with dotted ``section.key=value`` overrides (values parsed as YAML)."""
    data = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"unknown config key '{key}'")
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(f"unknown config key '{key}'")
        node[parts[-1]] = _parse_value(key.strip(), raw)
    return config_from_dict(data)


def _declared_type(key: str) -> Any:
    section, _, name = key.partition(".")
    section_type = get_type_hints(Config).get(section)
    return get_type_hints(section_type).get(name) if section_type is not None else None


def _parse_value(key: str, raw: str) -> Any:
    """An override's value: text as is for string keys (paths like ``2024`` or ``yes`` stay strings;
    ``null`` clears an optional one), YAML otherwise (numbers, booleans, null)."""
    hint = _declared_type(key)
    if hint is str or (get_origin(hint) in (Union, types.UnionType) and str in get_args(hint)):
        if raw.strip() in ("null", "~", "None") and type(None) in get_args(hint):
            return None
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def save_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as YAML atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


PRESETS = "brainvq.configs"  # the presets ship inside the package (importlib.resources)


def preset_names() -> list[str]:
    """The names of the shipped presets (``demo``, ``oasis-cpu``, ...)."""
    folder = resources.files(PRESETS)
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def find_preset(name: str | Path) -> Path:
    """A shipped preset by name (``oasis-cpu``), or a YAML file given as a path.

    A name is looked up only among the presets that ship with the package, never in the working
    directory, so a ``configs/demo.yaml`` lying there cannot silently replace the shipped one; a user's own
    file is used when it is given as a path (``--config my.yaml`` or ``--preset ./my.yaml``).
    """
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: config file not found")
        return candidate
    entry = resources.files(PRESETS) / f"{name}.yaml"
    if not entry.is_file():
        raise ConfigError(f"preset '{name}' not found (presets: {', '.join(preset_names())})")
    return Path(str(entry))
