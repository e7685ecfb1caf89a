"""Error types that the CLI turns into one clear line and a non-zero exit code."""

from __future__ import annotations


class BrainVQError(Exception):
    """Base class for every error brainvq reports to a user (no traceback shown by the CLI)."""

    exit_code = 2


class DataError(BrainVQError):
    """The data on disk is missing, malformed or inconsistent; the message names the path."""


class ConfigError(BrainVQError):
    """A config file or ``--set`` override is unknown, mistyped or inconsistent."""


class RunError(BrainVQError):
    """A run directory is missing a stage, would be overwritten, or holds a mismatched checkpoint."""


class TrainingError(BrainVQError):
    """Training could not continue (for example the loss became NaN or infinite)."""

    exit_code = 3
