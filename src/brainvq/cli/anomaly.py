"""Likelihood and anomaly commands: ``score``, ``anomaly``, ``complete``, ``lesions``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from brainvq.cli.common import Commands, add_device_arg, add_json_arg


def cmd_complete(args: argparse.Namespace) -> int:
    from brainvq.anomaly.likelihood import complete_image
    from brainvq.runs import load_run

    run = load_run(args.run, args.device)
    grid = complete_image(run, Path(args.image), args.keep_rows, args.n, Path(args.out), seed=args.seed,
                          slice_index=args.slice)  # fmt: skip
    print(f"{args.n} completions -> {grid}")
    return 0


def cmd_lesions(args: argparse.Namespace) -> int:
    from brainvq.anomaly.lesions import make_lesions

    summary = make_lesions(
        args.data, args.split, args.out, seed=args.seed, fraction=args.fraction, force=args.force,
        types=tuple(t.strip() for t in args.types.split(",") if t.strip()),
    )  # fmt: skip
    print(
        f"wrote {summary['images']} slices of split {args.split} to {args.out}, {summary['lesioned']} with lesions"
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from brainvq.anomaly.detection import prepare_out, score_images
    from brainvq.anomaly.inputs import open_inputs
    from brainvq.runs import load_run

    run = load_run(args.run, args.device)
    run.require_prior()
    inputs = open_inputs(args.data, args.split, args.images, None)
    prepare_out(args.out, ("nll", "overlays"))
    result = score_images(run, inputs, args.out, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({k: v for k, v in result.items()}, indent=2))
    else:
        print(f"{result['images']} images, mean {result['mean_bits_per_code']:.3f} bits per code -> {args.out}")
    return 0


def cmd_anomaly(args: argparse.Namespace) -> int:
    from brainvq.anomaly.detection import detect, prepare_out
    from brainvq.anomaly.inputs import open_inputs
    from brainvq.runs import load_run

    run = load_run(args.run, args.device)
    run.require_prior()
    if getattr(args, "volumes", None) is not None:
        return _anomaly_volumes(args, run)
    inputs = open_inputs(args.data, args.split, args.images, args.truth)
    methods = args.methods.split(",") if args.methods else None
    folders = ("anomaly", "residual", "anomaly_overlays", "residual_overlays") if not args.no_maps else ()
    prepare_out(args.out, folders)
    result = detect(run, inputs, args.out, methods=methods, seed=args.seed, batch_size=args.batch_size,
                    maps=not args.no_maps, reference_data=args.reference_data)  # fmt: skip
    shown = {k: v for k, v in result.items() if k != "per_image"}
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        for method, scores in result.get("methods", {}).items():
            print(f"{method:22s} " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)))
        print(f"{result['images']} images; chosen method {result['chosen_method']} -> {args.out}")
    return 0


def _anomaly_volumes(args: argparse.Namespace, run: object) -> int:
    from brainvq.anomaly.detection import prepare_out
    from brainvq.anomaly.volumes import detect_volumes
    from brainvq.errors import DataError

    if args.data is not None or args.images is not None:
        raise DataError("give one of --volumes DIR, --data DATA --split S, or --images DIR")
    prepare_out(args.out, ())
    log = (lambda message: None) if args.json else print
    methods = args.methods.split(",") if args.methods else None
    result = detect_volumes(run, args.volumes, args.out, truth_volumes=args.truth_volumes, methods=methods,  # type: ignore[arg-type]
                            seed=args.seed, batch_size=args.batch_size, reference_data=args.reference_data, log=log)  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    elif "pooled" in result:
        for method, scores in result["pooled"].items():
            if isinstance(scores, dict):
                shown = {k: v for k, v in scores.items() if isinstance(v, float)}
                print(f"{method:22s} " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    return 0


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, help="a run with trained priors")
    p.add_argument("--data", type=Path, help="a data root (with --split)")
    p.add_argument("--split", help="the split of --data (default validate)")
    p.add_argument("--images", type=Path, help="any folder of slices instead of --data/--split")
    p.add_argument("--out", type=Path, required=True, help="where the maps and scores go")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch")
    add_device_arg(p)
    add_json_arg(p)


def add_commands(sub: Commands) -> None:
    p = sub.add_parser("score", help="per-code NLL maps (bits) from the prior, per-image totals, overlays")
    _add_inputs(p)
    p.set_defaults(handler=cmd_score)

    p = sub.add_parser(
        "anomaly", help="anomaly maps of slices or whole scans: the priors' normalised surprise, and baselines"
    )
    _add_inputs(p)
    p.add_argument("--truth", type=Path, help="folder of lesion masks with the images' file names")
    p.add_argument(
        "--volumes", type=Path, help="a folder of scans (or one): conformed, mapped, written back as NIfTI"
    )
    p.add_argument(
        "--truth-volumes", type=Path, help="with --volumes: lesion masks in each scan's grid, by subject id"
    )
    p.add_argument(
        "--methods",
        help="comma-separated anomaly methods, or 'all' (default: the chosen one, residual, intensity)",
    )
    p.add_argument(
        "--reference-data", type=Path,
        help="the run's data root (healthy statistics and thresholds; default: the run's data.root)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the redraws (method healed)")
    p.add_argument("--no-maps", action="store_true", help="scores only, no map files")
    p.set_defaults(handler=cmd_anomaly)

    p = sub.add_parser("complete", help="keep the first code rows of a slice and let the prior complete it")
    p.add_argument("--run", type=Path, required=True, help="a run with trained priors")
    p.add_argument("--image", type=Path, required=True, help="one slice of a folder of slices")
    p.add_argument("--keep-rows", type=int, required=True, help="code rows kept from the top of the slice")
    p.add_argument("--n", type=int, default=4, help="how many completions")
    p.add_argument("--seed", type=int, default=0, help="the same seed draws the same completions")
    p.add_argument("--slice", type=int, help="slice index (default: from an OASIS file name or samples.json)")
    p.add_argument("--out", type=Path, required=True, help="where completions.png goes")
    add_device_arg(p)
    p.set_defaults(handler=cmd_complete)

    p = sub.add_parser("lesions", help="a copy of a split with synthetic lesions and their masks (ground truth)")
    p.add_argument("--data", type=Path, required=True, help="a data root in the OASIS layout")
    p.add_argument("--split", default="validate", help="the split to copy (default validate)")
    p.add_argument("--out", type=Path, required=True, help="the lesioned data root to write")
    p.add_argument("--seed", type=int, default=0, help="the same seed implants the same lesions")
    p.add_argument("--fraction", type=float, default=0.5, help="fraction of slices that get lesions")
    p.add_argument(
        "--types", default="blob,ms", help="blob (1-3 blobs of 3-20 px), ms (MS-like clusters); default both"
    )
    p.add_argument(
        "--force", action="store_true", help="replace OUT if brainvq made it (once the new one is built)"
    )
    p.set_defaults(handler=cmd_lesions)
