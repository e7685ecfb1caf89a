"""Training commands: ``train-vqvae``, ``train-prior``, ``train-judge``, ``encode``, ``pipeline``, ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from brainvq.cli.common import (
    Commands,
    add_config_args,
    add_device_arg,
    add_json_arg,
    add_stop_args,
    print_summary,
    stage_config,
)
from brainvq.errors import BrainVQError


def pipeline_config(args: argparse.Namespace) -> Any:
    """``--config`` or ``--preset``, then ``--set`` and ``--data``. Neither given: the run's saved
    ``config.yaml`` when RUN exists (so an interrupted pipeline goes on as it was started, without its
    flags again; the same rule as a new stage of an existing run), else the ``oasis-cpu`` preset."""
    from brainvq.runs import RunDir
    from brainvq.training.resume import stage_config as resolve

    saved = RunDir(args.run).config.is_file()
    preset = args.preset or (None if saved or args.config else "oasis-cpu")
    return resolve(
        args.run,
        "pipeline",
        resume=False,
        config_file=args.config,
        preset=preset,
        overrides=list(args.set or []),
        data=getattr(args, "data", None),
        log=lambda message: print(f"{message}; --preset or --config replace it", file=sys.stderr),
    )


def cmd_train_vqvae(args: argparse.Namespace) -> int:
    from brainvq.training.stages import train_vqvae

    config = stage_config(args, "vqvae", "train")
    summary = train_vqvae(config, args.run, resume=args.resume, force=args.force, progress=not args.quiet)
    print_summary(summary, args.json)
    return 0


def cmd_train_prior(args: argparse.Namespace) -> int:
    from brainvq.runs import RunDir
    from brainvq.training.stages import run_prior_levels, train_prior
    from brainvq.training.tasks import PRIOR_STAGES

    # which levels: the run's VQ-VAE and the config this command gives (top_prior_train.reversed_prior)
    chosen = stage_config(
        argparse.Namespace(**{**vars(args), "resume": False}), "prior", "top_prior_train", quiet=True
    )
    levels = run_prior_levels(args.run, args.level, chosen)  # a two-level run: the top prior, then the bottom
    started = [level for level in levels if RunDir(args.run).checkpoint(PRIOR_STAGES[level], "last").is_file()]
    if args.resume and not started:
        raise BrainVQError(f"{args.run}: nothing to resume (no prior checkpoint yet; drop --resume)")
    summaries = {}
    for level in levels:
        section = "top_prior_train" if level != "bottom" else "prior_train"
        # --resume continues the levels that have a checkpoint and starts the others (training stopped
        # during the top prior leaves no bottom one)
        level_args = argparse.Namespace(**{**vars(args), "resume": args.resume and level in started})
        config = stage_config(level_args, PRIOR_STAGES[level], section)
        summaries[level] = train_prior(
            config, args.run, resume=level_args.resume, force=args.force, progress=not args.quiet, level=level
        )
    print_summary(summaries["bottom"] if len(summaries) == 1 and "bottom" in summaries else summaries, args.json)
    return 0


def cmd_train_judge(args: argparse.Namespace) -> int:
    from brainvq.evaluation.judge import train_judge

    config = stage_config(args, "judge", "judge_train", run=args.out)
    summary = train_judge(config, args.out, resume=args.resume, force=args.force, progress=not args.quiet)
    print_summary(summary, args.json)
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from brainvq.pipeline import encode_run

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    print_summary(
        encode_run(args.run, args.data, splits, batch_size=args.batch_size, device=args.device), args.json
    )
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from brainvq.pipeline import headline, run_pipeline

    config = pipeline_config(args)
    summary = run_pipeline(
        config, args.run, force=args.force, progress=not args.quiet, samples=args.samples, device=args.device
    )
    from brainvq.devices import is_main_process

    if not is_main_process():  # under a distributed launch, rank 0 reports for all
        return 0
    print(f"report: {summary['report']}")
    print(json.dumps(headline(args.run), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from brainvq.config import find_preset, load_config
    from brainvq.data.phantom import make_phantom
    from brainvq.files import mark_owned, remove_owned
    from brainvq.pipeline import headline, run_pipeline

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise BrainVQError(f"{out}: already exists; pass --force to redo the demo there")
    started = time.monotonic()
    data = out / "phantom"
    if args.force:
        remove_owned(out, "brainvq demo folder")  # refuses a folder brainvq did not make
    mark_owned(out, "demo")
    print(f"[demo] writing a synthetic phantom dataset to {data} ...", flush=True)
    make_phantom(data, args.subjects, seed=0, size=args.size)
    config = load_config(find_preset("demo"), [f"data.root={data}", *(args.set or [])])
    summary = run_pipeline(config, out / "run", progress=True, samples=16, device=args.device)
    minutes = (time.monotonic() - started) / 60
    print(f"\n[demo] finished in {minutes:.1f} min. Report: {summary['report']}")
    print(json.dumps(headline(out / "run"), indent=2))
    return 0


def add_commands(sub: Commands) -> None:
    p = sub.add_parser("train-vqvae", help="train (or resume) the VQ-VAE of a run")
    p.add_argument(
        "--data", type=Path, help="data root (OASIS layout or a folder of PNGs); a resume keeps the run's"
    )
    p.add_argument("--run", type=Path, required=True, help="the run directory")
    add_config_args(p)
    add_stop_args(p)
    p.set_defaults(handler=cmd_train_vqvae)

    p = sub.add_parser("train-prior", help="train (or resume) the prior(s) on the run's code maps")
    p.add_argument("--run", type=Path, required=True, help="a run with a trained VQ-VAE and encoded splits")
    p.add_argument(
        "--level", choices=("all", "top", "bottom", "top-reversed", "stack"), default="all",
        help="two-level runs: which prior to train (all: the top, the top read backwards (anomaly maps), then "
        "the bottom; stack: the top prior of slice k given slice k-1's top map, for whole stacks)",
    )  # fmt: skip
    add_config_args(p)
    add_stop_args(p)
    p.set_defaults(handler=cmd_train_prior)

    p = sub.add_parser("encode", help="encode splits into code maps stored in the run")
    p.add_argument("--run", type=Path, required=True, help="a run with a trained VQ-VAE")
    p.add_argument("--data", type=Path, required=True, help="the data root to encode")
    p.add_argument("--splits", default="train,validate", help="comma-separated splits (default train,validate)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    add_device_arg(p)
    add_json_arg(p)
    p.set_defaults(handler=cmd_encode)

    p = sub.add_parser("train-judge", help="train the realism judge (tissue U-Net + slice head) on real slices")
    p.add_argument("--data", type=Path, help="a data root in the OASIS layout with tissue masks")
    p.add_argument("--out", type=Path, required=True, help="the judge's folder")
    add_config_args(p)
    add_stop_args(p)
    p.set_defaults(handler=cmd_train_judge)

    from brainvq.config import preset_names

    p = sub.add_parser("pipeline", help="every stage from data to report; finished stages are skipped")
    p.add_argument("--data", type=Path, required=True, help="data root (OASIS layout or a folder of PNGs)")
    p.add_argument("--run", type=Path, required=True, help="the run directory (made, or continued)")
    p.add_argument(
        "--preset",
        help=f"a shipped preset ({', '.join(preset_names())}) or a YAML path; default: the run's saved "
        "config when RUN exists, else oasis-cpu",
    )  # fmt: skip
    p.add_argument("--samples", type=int, default=16, help="slices to draw at the end")
    add_device_arg(p)
    p.add_argument("--force", action="store_true", help="delete RUN (if brainvq made it) and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(p)
    p.set_defaults(handler=cmd_pipeline)

    p = sub.add_parser("demo", help="phantom data -> VQ-VAE -> prior -> samples -> report, in minutes on a CPU")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="the demo's folder (default runs/demo)")
    p.add_argument("--subjects", type=int, default=24, help="phantom subjects")
    p.add_argument("--size", type=int, default=128, help="phantom image side in pixels")
    add_device_arg(p)
    p.add_argument("--force", action="store_true", help="redo the demo in OUT (if brainvq made it)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value of the demo preset")
    p.set_defaults(handler=cmd_demo)
