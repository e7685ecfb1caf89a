"""Generating and measuring: ``sample``, ``evaluate``, ``evaluate-samples``, ``segment``, ``report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from brainvq.cli.common import Commands, add_device_arg, add_json_arg, add_top_map_args
from brainvq.errors import BrainVQError


def cmd_evaluate_samples(args: argparse.Namespace) -> int:
    from brainvq.evaluation.samples import score_samples

    if args.volumes:
        return _evaluate_stacks(args)
    result = score_samples(
        args.judge, args.real, args.split, samples=args.samples, run=args.run, n=args.n, seed=args.seed,
        sampling_flags=(args.temperature, args.top_p, args.top_map_temperature, args.top_map_top_p,
                        args.background_check),
        train_root=args.train, out=args.out, device=args.device, progress=not args.json,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_realism(result)
    return 0


def _evaluate_stacks(args: argparse.Namespace) -> int:
    from brainvq.evaluation.stacks import evaluate_stacks

    result = evaluate_stacks(args.judge, args.real, args.split, run_root=args.run, samples=args.samples, n=args.n,
                             seed=args.seed, train_root=args.train, out=args.out, device=args.device)  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, scores in result["sets"].items():
            print(f"{name:22s} " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items() if k != "stacks"))
        for key, share in result.get("gap_closed", {}).items():
            print(f"the stacks close {share:.0%} of the gap to real on {key}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from brainvq.sampling.files import sample_run

    if args.volumes is not None:
        return _sample_volumes(args)
    stack_flags = {"--labels": args.labels, "--guidance": args.guidance, "--candidates": args.candidates}
    for flag, value in stack_flags.items():
        if value is not None:
            raise BrainVQError(f"{flag} is for whole stacks: give it with --volumes N")
    result = sample_run(
        args.run,
        args.n,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        top_map_temperature=args.top_map_temperature,
        top_map_top_p=args.top_map_top_p,
        background_check=args.background_check,
        slice_index=args.slice,
        batch_size=args.batch_size,
        sampler=args.sampler,
        out=args.out,
        device=args.device,
        progress=not args.json,
        record=args.out is None,  # a draw into another folder keeps the run's own record (metrics/sampling.json)
    )
    if args.json:
        keys = ("n", "seconds", "images", "grid", "sampler", "redrawn_top_maps", "unresolved_top_maps")
        print(json.dumps({k: result[k] for k in keys}, indent=2))
    else:
        print(
            f"{result['n']} slices in {result['seconds']:.1f} s ({result['sampler']} sampler) -> {result['grid']}"
        )
        if result["redrawn_top_maps"]:
            print(f"{result['redrawn_top_maps']} top maps with no background drawn again")
    return 0


def _sample_volumes(args: argparse.Namespace) -> int:
    from brainvq.sampling.stack_files import draw_stacks

    out = args.out if args.out is not None else args.run / "samples" / "stacks"
    record = draw_stacks(args.run, args.volumes, out, seed=args.seed, device=args.device,
                         temperature=args.temperature, top_map_temperature=args.top_map_temperature,
                         background_check=args.background_check, guidance=args.guidance, candidates=args.candidates,
                         sampler=args.sampler,
                         judge=args.labels, progress=not args.json)  # fmt: skip
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{record['stacks']} stacks of {record['slices']} slices in {record['seconds']:.1f} s -> {out}")
        if record["redrawn_top_maps"]:
            print(f"{record['redrawn_top_maps']} slices' top maps with no background drawn again")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from brainvq.evaluation.reconstruction import evaluate_run

    result = evaluate_run(
        args.run, args.data, args.split, batch_size=args.batch_size, device=args.device, precision=args.precision
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            if key != "per_subject_ssim":
                print(f"{key}: {value}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from brainvq.figures import all_training_figures
    from brainvq.report import write_report
    from brainvq.runs import RunDir

    run = RunDir(args.run)
    if not run.root.is_dir():
        raise BrainVQError(f"{run.root}: run directory does not exist")
    all_training_figures(run)
    print(write_report(run.root))
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from brainvq.evaluation.judge import load_judge, segment_folder

    judge = load_judge(args.judge, args.device)
    count = segment_folder(judge, args.input, args.out, batch_size=args.batch_size)
    print(f"wrote {count} tissue masks (0/85/170/255) to {args.out} (judge {judge.hash})")
    return 0


def _print_realism(result: dict[str, Any]) -> None:
    keys = (
        "n",
        "fd_judge",
        "kid_judge",
        "precision",
        "recall",
        "tissue_error",
        "slice_error",
        "ms_ssim_diversity",
        "memorised_fraction",
    )
    rows = {"samples": result, **result["reference"]}
    print(f"{'set':16s}" + "".join(f"{k:>20s}" for k in keys))
    for name, values in rows.items():
        cells = "".join(_cell(values.get(k)) for k in keys)
        print(f"{name:16s}{cells}")
    if result.get("redrawn_top_maps"):
        print(f"{result['redrawn_top_maps']} top maps with no background drawn again "
              f"({result['unresolved_top_maps']} still without after the last round)")  # fmt: skip
    print(f"judge {result['judge_hash']}; {result['note']}")


def _cell(value: Any) -> str:
    if value is None:
        return f"{'-':>20s}"
    return f"{value:>20.4f}" if isinstance(value, float) else f"{value!s:>20s}"


def add_commands(sub: Commands) -> None:
    p = sub.add_parser("sample", help="generate new slices with the run's prior and decoder")
    p.add_argument("--run", type=Path, required=True, help="a run with trained priors")
    p.add_argument("--n", type=int, default=16, help="how many slices")
    p.add_argument("--seed", type=int, default=0, help="the same seed draws the same slices")
    p.add_argument("--temperature", type=float, help="divides the logits (default: the run's sample.temperature)")
    p.add_argument("--top-p", type=float, help="nucleus sampling below 1 (default: the run's sample.top_p)")
    add_top_map_args(p)
    p.add_argument("--slice", type=int, help="slice index to condition on (slice-conditioned priors)")
    p.add_argument("--batch-size", type=int, default=16, help="maps drawn at once")
    p.add_argument(
        "--sampler", choices=("fast", "naive"), default="fast", help="fast (cached) or naive (full passes)"
    )
    p.add_argument(
        "--out", type=Path, help="output folder (default RUN/samples; with --volumes RUN/samples/stacks)"
    )
    p.add_argument(
        "--volumes", type=int,
        help="draw this many whole stacks with the stack prior instead: NIfTI volumes, OASIS-layout PNGs, views",
    )  # fmt: skip
    p.add_argument(
        "--labels", type=Path, metavar="JUDGE",
        help="with --volumes: also write each stack's tissue labels by this judge (brainvq train-judge)",
    )  # fmt: skip
    p.add_argument(
        "--guidance", type=float,
        help="with --volumes: the independent top prior's weight in the stack's top maps (default: the run's "
        "sample.stack_guidance; 0: the stack prior alone)",
    )  # fmt: skip
    p.add_argument(
        "--candidates", type=int,
        help="with --volumes: draws of each slice's top map, of which the independent top prior keeps the one "
        "most like its slice index (sample.stack_rivals) (default: the run's sample.stack_candidates; 1: one draw)",
    )  # fmt: skip
    add_device_arg(p)
    add_json_arg(p)
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("evaluate", help="SSIM/PSNR/MS-SSIM, code usage and prior bits per code on a split")
    p.add_argument("--run", type=Path, required=True, help="a run with a trained VQ-VAE")
    p.add_argument("--data", type=Path, required=True, help="the data root holding the split")
    p.add_argument("--split", default="validate", help="the split to evaluate (default validate)")
    p.add_argument("--batch-size", type=int, default=16, help="16 keeps the peak under 1 GB on 256x256 slices")
    add_device_arg(p)
    p.add_argument("--precision", help="override the inference precision (e.g. 32-true)")
    add_json_arg(p)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser(
        "evaluate-samples", help="realism, coverage, anatomy, diversity and memorisation of samples"
    )
    p.add_argument("--judge", type=Path, required=True, help="a judge folder (brainvq train-judge)")
    p.add_argument("--real", type=Path, required=True, help="data root with the held-out split")
    p.add_argument("--split", default="validate", help="the held-out split (validate or test)")
    p.add_argument("--train", type=Path, help="data root of the training split (memorisation reference)")
    p.add_argument("--samples", type=Path, help="any folder of PNGs to score (a sample folder too)")
    p.add_argument("--run", type=Path, help="a run: draw --n samples from it and add its reconstructions")
    p.add_argument("--n", type=int, default=256, help="with --run: how many samples to draw")
    p.add_argument("--seed", type=int, default=0, help="with --run: the sampling seed")
    p.add_argument("--temperature", type=float, help="with --run: sampling temperature (default: the run's)")
    p.add_argument("--top-p", type=float, help="with --run: nucleus sampling below 1 (default: the run's)")
    add_top_map_args(p)
    p.add_argument("--out", type=Path, help="where metrics/ and figures/ go (default: the run)")
    add_device_arg(p)
    p.add_argument(
        "--volumes", action="store_true",
        help="score whole stacks instead (--samples OUT of sample --volumes, else --n drawn with --run's stack "
        "prior; --run also draws --n stacks of independent slices as the baseline): adjacent-slice agreement, "
        "tissue curves, through-plane texture, subject memorisation",
    )  # fmt: skip
    add_json_arg(p)
    p.set_defaults(handler=cmd_evaluate_samples)

    p = sub.add_parser("segment", help="tissue masks (0/85/170/255) for every PNG of a folder, with a judge")
    p.add_argument("--judge", type=Path, required=True, help="a judge folder (brainvq train-judge)")
    p.add_argument("input", type=Path, help="a folder of slices (a sample folder too)")
    p.add_argument("out", type=Path, help="where the masks go, with the slices' names")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    add_device_arg(p)
    p.set_defaults(handler=cmd_segment)

    p = sub.add_parser("report", help="write RUN/report.html (self-contained) and the training figures")
    p.add_argument("--run", type=Path, required=True, help="the run directory")
    p.set_defaults(handler=cmd_report)
