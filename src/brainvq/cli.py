"""The ``brainvq`` command line: one subcommand per stage, plus ``pipeline``, ``demo`` and ``report``.

Every user-facing error (bad data, bad config, a run that would be overwritten, a mismatched
checkpoint) prints one ``brainvq: error: ...`` line and exits non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from brainvq.errors import BrainVQError

Handler = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace) -> Any:
    from brainvq.config import find_preset, load_config

    path = args.config
    if getattr(args, "preset", None):
        path = path or find_preset(args.preset)
    config = load_config(path, list(args.set or []))
    if getattr(args, "data", None):
        config.data.root = str(args.data)  # a path, never parsed as YAML (a folder named 2024 or yes)
    return config


def _stop_overrides(args: argparse.Namespace, section: str) -> list[str]:
    out = []
    for flag, key in (("epochs", "epochs"), ("max_steps", "max_steps"), ("max_minutes", "max_minutes")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{section}.{key}={value}")
    return out


def _print(data: Any, as_json: bool) -> None:
    from brainvq.devices import is_main_process

    if not is_main_process():  # under a distributed launch, rank 0 speaks for all
        return
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")


# ----------------------------------------------------------------------------- commands
def cmd_phantom(args: argparse.Namespace) -> int:
    import tempfile

    from brainvq.data.phantom import make_phantom
    from brainvq.files import check_replaceable, mark_owned, swap_in

    if args.subjects < 3:
        raise BrainVQError("--subjects must be at least 3 (one subject per split)")
    out = Path(args.out)
    check_replaceable(out, "phantom dataset", args.force)  # never writes into a folder it did not make
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        counts = make_phantom(
            built, args.subjects, seed=args.seed, size=args.size, num_slices=args.slices, volumes=args.volumes
        )
        mark_owned(built, "phantom")
        swap_in(built, out)
    finally:
        if built.exists():
            shutil.rmtree(built)
    seconds = time.monotonic() - started
    total = sum(counts.values())
    print(
        f"wrote {total} slices ({', '.join(f'{k} {v}' for k, v in counts.items())}) to {args.out} "
        f"in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} slices/s)"
    )
    return 0


def cmd_slice_volumes(args: argparse.Namespace) -> int:
    from brainvq.data.slicing import parse_label_map, parse_range, slice_volumes
    from brainvq.data.volumes import SliceOptions

    try:
        fractions = [float(f) for f in args.splits.split(",")]
        low, high = (float(p) for p in args.percentiles.split(","))
    except ValueError:
        raise BrainVQError("--splits and --percentiles take comma-separated numbers") from None
    options = SliceOptions(
        axis=args.axis,
        num_slices=args.slices if args.slices is not None else (None if args.range else 32),
        slice_range=parse_range(args.range) if args.range else None,
        size=args.size,
        bits=args.bits,
        percentiles=(low, high),
        label_map=parse_label_map(args.label_map),
    )
    summary = slice_volumes(
        args.input,
        args.out,
        options,
        labels_dir=args.labels,
        subject_pattern=args.subject_pattern,
        subjects_csv=args.subjects_csv,
        fractions=fractions,
        seed=args.seed,
        force=args.force,
        workers=args.workers,
        progress=not args.json,
    )
    result = {
        "out": str(summary.out),
        "volumes": summary.volumes,
        "images": summary.images,
        "subjects": summary.subjects,
        "seconds": round(summary.seconds, 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"wrote {summary.images} slices of {summary.volumes} volumes to {summary.out} in "
            f"{summary.seconds:.1f} s (subjects: {', '.join(f'{k} {v}' for k, v in summary.subjects.items())})"
        )
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from brainvq.data.checks import check_data

    report = check_data(args.data)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['root']} ({report['layout']} layout)")
        for split, s in report["splits"].items():
            size = ", ".join(f"{w}x{h}" for w, h in s["image_size"]) or "-"
            print(
                f"  {split:9s} {s['images']:6d} images  {s['subjects']:4d} subjects  "
                f"slices/subject {s['slices_per_subject']}  size {size}  dtype {','.join(s['dtype'])}  "
                f"range {s['intensity_range']}  masks {s['masks']}"
            )
        for problem in report["problems"]:
            print(f"  problem: {problem}")
        print("no problems found" if not report["problems"] else f"{len(report['problems'])} problems found")
    return 1 if report["problems"] else 0


def _data_override(args: argparse.Namespace, config: Any) -> list[str]:
    """Point ``config.data.root`` at ``--data`` when given; the change it made, for the report."""
    data = getattr(args, "data", None)
    if not data or str(data) == config.data.root:
        return []
    change = f"data.root: {config.data.root!r} -> {str(data)!r}"
    config.data.root = str(data)
    return [change]


def _stage_config(args: argparse.Namespace, stage: str, section: str, run: Path | None = None) -> Any:
    """The config a training command runs with.

    A new stage: defaults, then ``--config``, ``--set``, ``--data`` and the stop flags. A new stage
    of an existing run (its first prior, or ``--force``) without ``--config``/``--preset``: the run's
    saved ``config.yaml`` in place of the defaults, so the preset the run was made with still holds
    (budgets, prior architecture) and ``--set`` changes only what it names. A resumed stage
    (``--resume``): the run's own saved config, then only the keys the user gave on purpose, each of
    which is reported, so a resume never silently falls back to defaults.
    """
    from brainvq.config import apply_overrides, load_config
    from brainvq.runs import RunDir
    from brainvq.training.resume import resumed_config

    if not args.resume:
        saved = RunDir(run or args.run).config
        if args.config is not None or getattr(args, "preset", None) or not saved.is_file():
            return apply_overrides(_config(args), _stop_overrides(args, section))
        config = load_config(saved, list(args.set or []) + _stop_overrides(args, section))
        _data_override(args, config)
        print(f"[{stage}] starting from the run's saved config ({saved})", file=sys.stderr)
        return config
    overrides = list(args.set or []) + _stop_overrides(args, section)
    config, changed = resumed_config(run or args.run, stage, overrides, args.config)
    changed += _data_override(args, config)
    note = "; overridden: " + ", ".join(changed) if changed else " (nothing overridden)"
    print(f"[{stage}] resuming with the run's saved config{note}", file=sys.stderr)
    return config


def cmd_train_vqvae(args: argparse.Namespace) -> int:
    from brainvq.training.stages import train_vqvae

    config = _stage_config(args, "vqvae", "train")
    summary = train_vqvae(config, args.run, resume=args.resume, force=args.force, progress=not args.quiet)
    _print(summary, args.json)
    return 0


def cmd_train_prior(args: argparse.Namespace) -> int:
    from brainvq.runs import RunDir
    from brainvq.training.stages import run_prior_levels, train_prior
    from brainvq.training.tasks import PRIOR_STAGES

    levels = run_prior_levels(args.run, args.level)  # a two-level run: the top prior, then the bottom
    started = [level for level in levels if RunDir(args.run).checkpoint(PRIOR_STAGES[level], "last").is_file()]
    if args.resume and not started:
        raise BrainVQError(f"{args.run}: nothing to resume (no prior checkpoint yet; drop --resume)")
    summaries = {}
    for level in levels:
        section = "top_prior_train" if level == "top" else "prior_train"
        # --resume continues the levels that have a checkpoint and starts the others (training stopped
        # during the top prior leaves no bottom one)
        level_args = argparse.Namespace(**{**vars(args), "resume": args.resume and level in started})
        config = _stage_config(level_args, PRIOR_STAGES[level], section)
        summaries[level] = train_prior(
            config, args.run, resume=level_args.resume, force=args.force, progress=not args.quiet, level=level
        )
    _print(summaries["bottom"] if len(summaries) == 1 and "bottom" in summaries else summaries, args.json)
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from brainvq.pipeline import encode_run

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    _print(encode_run(args.run, args.data, splits, batch_size=args.batch_size, device=args.device), args.json)
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


def cmd_sample(args: argparse.Namespace) -> int:
    from brainvq.sampling.files import sample_run

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


def cmd_pipeline(args: argparse.Namespace) -> int:
    from brainvq.pipeline import headline, run_pipeline

    config = _config(args)
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


def cmd_train_judge(args: argparse.Namespace) -> int:
    from brainvq.evaluation.judge import train_judge

    config = _stage_config(args, "judge", "judge_train", run=args.out)
    summary = train_judge(config, args.out, resume=args.resume, force=args.force, progress=not args.quiet)
    _print(summary, args.json)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from brainvq.evaluation.judge import load_judge, segment_folder

    judge = load_judge(args.judge, args.device)
    count = segment_folder(judge, args.input, args.out, batch_size=args.batch_size)
    print(f"wrote {count} tissue masks (0/85/170/255) to {args.out} (judge {judge.hash})")
    return 0


def cmd_evaluate_samples(args: argparse.Namespace) -> int:
    from brainvq.data.layout import available_splits, is_oasis_root
    from brainvq.evaluation.judge import load_judge
    from brainvq.evaluation.samples import evaluate_samples, vqvae_reconstructor
    from brainvq.evaluation.scores import folder_set
    from brainvq.runs import load_run
    from brainvq.sampling import describe_sampling, resolve_sampling
    from brainvq.sampling.files import draw_for_realism, realism_suffix

    if (args.samples is None) == (args.run is None):
        raise BrainVQError("give exactly one of --samples DIR or --run RUN (with --n N)")
    judge = load_judge(args.judge, args.device)
    loaded, out, suffix = None, args.out, ""
    given = (args.temperature, args.top_p, args.top_map_temperature, args.top_map_top_p, args.background_check)
    if any(v is not None for v in given) and args.run is None:
        raise BrainVQError(
            "the sampling flags (--temperature, --top-p, --top-map-*, --no-background-check) need --run"
        )
    if args.run is not None:
        loaded = load_run(args.run, args.device)
        sampling = resolve_sampling(loaded.config.sample, loaded.levels, *given)
        suffix = realism_suffix(args.seed, sampling)
        folder = draw_for_realism(
            loaded,
            args.real,
            args.split,
            args.n,
            sampling,
            seed=args.seed,
            device=args.device,
            progress=not args.json,
        )
        samples = folder_set(folder, f"samples ({args.run}, {describe_sampling(sampling)})")
        out = out or loaded.root.root
    else:
        samples = folder_set(args.samples, f"samples ({args.samples})")
    train_root = args.train
    if train_root is None and loaded is not None and loaded.config.data.root:
        train_root = loaded.config.data.root
    if train_root is None and is_oasis_root(args.real) and "train" in available_splits(args.real):
        train_root = args.real
    if train_root is None:
        raise BrainVQError("no training data for the memorisation check: pass --train DATA")
    figures = Path(out) / "figures" / (f"realism{suffix}" if suffix else "") if out else None
    result = evaluate_samples(
        judge,
        samples,
        args.real,
        args.split,
        train_root=train_root,
        reconstruct=vqvae_reconstructor(loaded) if loaded is not None else None,
        cache=Path(args.judge) / "cache",
        figures=figures,
    )
    if loaded is not None:
        result.update(sampling._asdict())
        drawn = json.loads((folder / "samples.json").read_text())
        done = ("background_check", "redrawn_top_maps", "unresolved_top_maps")  # what the draw did
        result.update({key: drawn.get(key) for key in done})
    if out:
        from brainvq.files import atomic_write_json

        atomic_write_json(Path(out) / "metrics" / f"realism_{args.split}{suffix}.json", result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_realism(result)
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


def cmd_lesions(args: argparse.Namespace) -> int:
    from brainvq.anomaly.lesions import make_lesions

    summary = make_lesions(
        args.data, args.split, args.out, seed=args.seed, fraction=args.fraction, force=args.force
    )
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


def cmd_complete(args: argparse.Namespace) -> int:
    from brainvq.anomaly.likelihood import complete
    from brainvq.data.dataset import load_split
    from brainvq.data.layout import record_slice
    from brainvq.figures import image_grid
    from brainvq.runs import load_run

    run = load_run(args.run, args.device)
    image_path = Path(args.image)
    if not image_path.is_file():
        raise BrainVQError(f"{image_path}: image not found")
    folder = image_path.parent
    dataset = load_split(folder, "all", in_memory=False)
    index = next((i for i, r in enumerate(dataset.records) if r.path.name == image_path.name), None)
    if index is None:
        raise BrainVQError(f"{image_path}: not one of the folder's slices (a grid or an unlisted image)")
    image = dataset.images([index])
    known = record_slice(dataset.records[index])
    slice_index = args.slice if args.slice is not None else (known if known >= 0 else None)
    completions = complete(run, image, args.keep_rows, args.n, seed=args.seed,
                           slice_index=slice_index if run.config.prior.condition_on_slice else None)  # fmt: skip
    import torch

    cut = args.keep_rows * (image.shape[-2] // run.code_shape[0])
    shown = image.clone()
    shown[..., cut:, :] *= 0.35  # the part the prior does not see, dimmed
    grid = image_grid(
        torch.cat([image, shown, completions]),
        Path(args.out) / "completions.png",
        titles=[
            "original",
            f"kept: first {args.keep_rows} code rows",
            *[f"completion {k + 1}" for k in range(args.n)],
        ],
        title=f"{image_path.name}: completions (seed {args.seed})",
    )
    print(f"{args.n} completions -> {grid}")
    return 0


def cmd_anomaly(args: argparse.Namespace) -> int:
    from brainvq.anomaly.detection import detect, prepare_out
    from brainvq.anomaly.inputs import open_inputs
    from brainvq.runs import load_run

    run = load_run(args.run, args.device)
    run.require_prior()
    inputs = open_inputs(args.data, args.split, args.images, args.truth)
    folders = ("prior", "residual", "prior_overlays", "residual_overlays", "healed") if not args.no_maps else ()
    prepare_out(args.out, folders)
    given = None
    if args.dice_thresholds:
        given = {k: float(v) for k, v in (item.split("=") for item in args.dice_thresholds.split(","))}
    result = detect(run, inputs, args.out, quantile=args.quantile, seed=args.seed, batch_size=args.batch_size,
                    maps=not args.no_maps, dice_threshold=given)  # fmt: skip
    shown = {k: v for k, v in result.items() if k != "per_image"}
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        for method in ("prior", "residual"):
            if method in result:
                print(f"{method:9s} " + "  ".join(f"{k} {v:.4f}" for k, v in result[method].items()))
        print(f"{result['images']} images; {result['redrawn_fraction']:.2%} of codes redrawn -> {args.out}")
    return 0


# ----------------------------------------------------------------------------- parser
def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config file (sections data/model/prior/train/...)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.num_embeddings=256 (repeatable)",
    )


def _add_top_map_args(parser: argparse.ArgumentParser) -> None:
    """The top map's own sampling settings (two-level runs); by default it follows the bottom's."""
    parser.add_argument(
        "--top-map-temperature",
        type=float,
        help="two levels: the top map's (default: sample.top_map_temperature, else --temperature)",
    )
    parser.add_argument(
        "--top-map-top-p",
        type=float,
        help="two levels: the top map's nucleus (default: sample.top_map_top_p, else --top-p)",
    )
    parser.add_argument(
        "--no-background-check",
        dest="background_check",
        action="store_const",
        const=False,
        help="two levels: keep top maps with no background around the head (default: draw them again, "
        "unless sample.top_map_background_check is false)",
    )


def _add_stop_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--max-minutes", type=float)
    parser.add_argument("--resume", action="store_true", help="continue the run's last checkpoint")
    parser.add_argument("--force", action="store_true", help="start this stage over, replacing what the run holds")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainvq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantom", help="write a synthetic phantom dataset in the OASIS layout")
    p.add_argument("out", type=Path)
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--volumes", action="store_true", help="also write NIfTI volumes (OUT/volumes, OUT/labels)")
    p.add_argument("--force", action="store_true", help="replace OUT if brainvq made it")
    p.set_defaults(handler=cmd_phantom)

    from brainvq.data.volumes import DEFAULT_SUBJECT_PATTERN

    p = sub.add_parser("slice-volumes", help="cut NIfTI/Analyze/MGH volumes into the OASIS slice layout")
    p.add_argument("input", type=Path, help="folder of volumes (searched recursively)")
    p.add_argument("out", type=Path, help="output data root (must not exist unless --force)")
    p.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default="axial")
    p.add_argument("--slices", type=int, help="N evenly spaced slices over the head (default 32)")
    p.add_argument("--range", help="A:B voxel indices of the canonical (RAS+) volume along the axis")
    p.add_argument("--size", type=int, default=256, help="output side in pixels (default 256)")
    p.add_argument("--bits", type=int, choices=(8, 16), default=8)
    p.add_argument("--percentiles", default="0.5,99.5", help="robust intensity range (default 0.5,99.5)")
    p.add_argument("--labels", type=Path, help="folder of label volumes, matched by subject id")
    p.add_argument("--label-map", default="0:0,1:85,2:170,3:255", help="label value:grey level pairs")
    p.add_argument(
        "--subject-pattern", default=DEFAULT_SUBJECT_PATTERN, help="regex; its first group is the subject id"
    )
    p.add_argument("--subjects-csv", type=Path, help="CSV with columns file,subject (instead of the pattern)")
    p.add_argument("--splits", default="0.8,0.1,0.1", help="train,validate,test fractions of subjects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, help="processes (default: one per core)")
    p.add_argument("--force", action="store_true", help="replace OUT if brainvq made it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_slice_volumes)

    p = sub.add_parser("check-data", help="report images, subjects, sizes and problems per split")
    p.add_argument("data", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_check_data)

    p = sub.add_parser("train-vqvae", help="train (or resume) the VQ-VAE of a run")
    p.add_argument("--data", type=Path)
    p.add_argument("--run", type=Path, required=True)
    _add_config_args(p)
    _add_stop_args(p)
    p.set_defaults(handler=cmd_train_vqvae)

    p = sub.add_parser("train-prior", help="train (or resume) the prior(s) on the run's code maps")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument(
        "--level", choices=("all", "top", "bottom"), default="all",
        help="two-level runs: which prior to train (all: the top, then the bottom)",
    )  # fmt: skip
    _add_config_args(p)
    _add_stop_args(p)
    p.set_defaults(handler=cmd_train_prior)

    p = sub.add_parser("encode", help="encode splits into code maps stored in the run")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--splits", default="train,validate")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_encode)

    p = sub.add_parser("evaluate", help="SSIM/PSNR/MS-SSIM, code usage and prior metrics on a split")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="validate")
    p.add_argument("--batch-size", type=int, default=16, help="16 keeps the peak under 1 GB on 256x256 slices")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", help="override the run's precision (e.g. 32-true)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("sample", help="generate new slices with the run's prior and decoder")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, help="default: the run's sample.temperature")
    p.add_argument("--top-p", type=float, help="nucleus sampling below 1 (default: the run's sample.top_p)")
    _add_top_map_args(p)
    p.add_argument("--slice", type=int, help="slice index to condition on (slice-conditioned priors)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sampler", choices=("fast", "naive"), default="fast")
    p.add_argument("--out", type=Path, help="output folder (default RUN/samples)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("train-judge", help="train the realism judge (tissue U-Net + slice head) on real slices")
    p.add_argument("--data", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the judge's folder")
    _add_config_args(p)
    _add_stop_args(p)
    p.set_defaults(handler=cmd_train_judge)

    p = sub.add_parser("segment", help="tissue masks (0/85/170/255) for every PNG of a folder, with a judge")
    p.add_argument("--judge", type=Path, required=True)
    p.add_argument("input", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=cmd_segment)

    p = sub.add_parser(
        "evaluate-samples", help="realism, coverage, anatomy, diversity and memorisation of samples"
    )
    p.add_argument("--judge", type=Path, required=True)
    p.add_argument("--real", type=Path, required=True, help="data root with the held-out split")
    p.add_argument("--split", default="validate")
    p.add_argument("--train", type=Path, help="data root of the training split (memorisation reference)")
    p.add_argument("--samples", type=Path, help="any folder of PNGs to score")
    p.add_argument("--run", type=Path, help="a run: draw --n samples from it and add its reconstructions")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--temperature", type=float, help="with --run: sampling temperature (default: the run's config)"
    )
    p.add_argument("--top-p", type=float, help="with --run: nucleus sampling below 1 (default: the run's config)")
    _add_top_map_args(p)
    p.add_argument("--out", type=Path, help="where metrics/ and figures/ go (default: the run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_evaluate_samples)

    p = sub.add_parser("lesions", help="a copy of a split with synthetic lesions and their masks (ground truth)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="validate")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fraction", type=float, default=0.5, help="fraction of slices that get lesions")
    p.add_argument("--force", action="store_true")
    p.set_defaults(handler=cmd_lesions)

    for name, help_text in (
        ("score", "per-code NLL maps (bits) from the prior, per-image totals, overlays"),
        ("anomaly", "anomaly maps: prior resampling of unlikely codes vs the reconstruction residual"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--run", type=Path, required=True)
        p.add_argument("--data", type=Path)
        p.add_argument("--split")
        p.add_argument("--images", type=Path, help="any folder of slices instead of --data/--split")
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--device", default="auto")
        p.add_argument("--json", action="store_true")
        if name == "anomaly":
            p.add_argument("--truth", type=Path, help="folder of lesion masks with the images' file names")
            p.add_argument("--quantile", type=float, default=0.02, help="redraw codes below this quantile of p")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--no-maps", action="store_true", help="scores only, no map files")
            p.add_argument("--dice-thresholds", help="prior=T,residual=T: also report Dice at these thresholds")
        p.set_defaults(handler=cmd_score if name == "score" else cmd_anomaly)

    p = sub.add_parser("complete", help="keep the first code rows of a slice and let the prior complete it")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--keep-rows", type=int, required=True)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slice", type=int, help="slice index (default: from an OASIS file name)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=cmd_complete)

    p = sub.add_parser("report", help="write RUN/report.html (self-contained) and the training figures")
    p.add_argument("--run", type=Path, required=True)
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("pipeline", help="every stage from data to report; finished stages are skipped")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument(
        "--preset",
        default="oasis-cpu",
        help="a configs/ preset: oasis-cpu (two levels, the default), oasis-cpu-1level, oasis-gpu, demo, seed",
    )
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="delete RUN and start over")
    p.add_argument("--quiet", action="store_true")
    _add_config_args(p)
    p.set_defaults(handler=cmd_pipeline)

    p = sub.add_parser("demo", help="phantom data -> VQ-VAE -> prior -> samples -> report, in minutes on a CPU")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--subjects", type=int, default=24)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``brainvq`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.handler(args))
    except BrainVQError as error:
        print(f"brainvq: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("brainvq: interrupted (the last checkpoint was saved; --resume continues)", file=sys.stderr)
        return 130
    from brainvq.devices import end_process_group

    end_process_group()  # a distributed run leaves its group together (no-op otherwise)
    return status


if __name__ == "__main__":
    sys.exit(main())
