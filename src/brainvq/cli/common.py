"""What every command shares: the config flags, the stop flags, printing a summary."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]
Commands = Any  # argparse's _SubParsersAction


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="a YAML file of config sections (data, model, prior, train, ...); "
        "every key it leaves out keeps the defaults (brainvq config show prints the result)",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="override one config value, e.g. --set model.num_embeddings=256 (repeatable)",
    )  # fmt: skip


def add_stop_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, help="stop after this many epochs (the stage's train.epochs)")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--max-minutes", type=float, help="stop after this many minutes of training")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.add_argument("--force", action="store_true", help="start this stage over, replacing what the run holds")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_top_map_args(parser: argparse.ArgumentParser) -> None:
    """The top map's own sampling settings (two-level runs); by default the run's config.yaml."""
    parser.add_argument(
        "--top-map-temperature", type=float,
        help="two levels: the top map's temperature (default: sample.top_map_temperature, else --temperature)",
    )  # fmt: skip
    parser.add_argument(
        "--top-map-top-p", type=float,
        help="two levels: the top map's nucleus (default: sample.top_map_top_p, else --top-p)",
    )  # fmt: skip
    parser.add_argument(
        "--no-background-check", dest="background_check", action="store_const", const=False,
        help="two levels: keep top maps with no background around the head (default: draw them again, "
        "unless sample.top_map_background_check is false)",
    )  # fmt: skip


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (a GPU when one is visible), cpu, cuda or cuda:N")


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def stop_overrides(args: argparse.Namespace, section: str) -> list[str]:
    """The stop flags as ``--set`` overrides of the stage's training section."""
    out = []
    for flag in ("epochs", "max_steps", "max_minutes"):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{section}.{flag}={value}")
    return out


def stage_config(
    args: argparse.Namespace, stage: str, section: str, run: Path | None = None, *, quiet: bool = False
) -> Any:
    """The config a training command runs with (:func:`brainvq.training.resume.stage_config`); ``quiet``
    leaves out the note on where it came from."""
    from brainvq.training.resume import stage_config as resolve

    return resolve(
        run or args.run, stage, resume=args.resume, config_file=args.config, preset=getattr(args, "preset", None),
        overrides=[*(args.set or []), *stop_overrides(args, section)], data=getattr(args, "data", None),
        log=None if quiet else lambda message: print(message, file=sys.stderr),
    )  # fmt: skip


def print_summary(data: Any, as_json: bool) -> None:
    from brainvq.devices import is_main_process

    if not is_main_process():  # under a distributed launch, rank 0 speaks for all
        return
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")
