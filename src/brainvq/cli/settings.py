"""Seeing what will happen before it does: ``config show`` and ``devices``."""

from __future__ import annotations

import argparse
from pathlib import Path

from brainvq.cli.common import Commands, add_json_arg


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from brainvq.config import find_preset, load_config

    path = args.config or (find_preset(args.preset) if args.preset else None)
    config = load_config(path, list(args.set or []))
    source = str(path) if path is not None else "the defaults (Config())"
    print(f"# resolved from {source}" + (f" with {len(args.set)} --set" if args.set else ""))
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    import json

    import torch

    from brainvq.devices import resolve_accelerator, resolve_precision
    from brainvq.precision_probe import cpu_precision

    accelerator = resolve_accelerator("auto")
    result = {
        "accelerator": accelerator,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
        "precision": resolve_precision("auto", accelerator),
    }
    if accelerator == "cpu":
        result["why"] = cpu_precision().reason
    else:
        result["why"] = "GPU: bf16 autocast where the GPU supports bf16, else 16-mixed"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


def add_commands(sub: Commands) -> None:
    from brainvq.config import preset_names

    p = sub.add_parser("config", help="show the fully resolved config of a preset, a file and overrides")
    actions = p.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="print the resolved config as YAML (what training would use)")
    show.add_argument("--preset", help=f"a shipped preset ({', '.join(preset_names())}) or a YAML path")
    show.add_argument("--config", type=Path, help="a YAML file laid over the preset (or the defaults)")
    show.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one value (repeatable)")
    show.set_defaults(handler=cmd_config_show)

    p = sub.add_parser("devices", help="the device and precision that `auto` picks here, and why")
    add_json_arg(p)
    p.set_defaults(handler=cmd_devices)
