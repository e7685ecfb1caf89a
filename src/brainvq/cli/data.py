"""Data commands: ``phantom``, ``slice-volumes``, ``check-data``."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from brainvq.cli.common import Commands, add_json_arg
from brainvq.errors import BrainVQError


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


def add_commands(sub: Commands) -> None:
    p = sub.add_parser("phantom", help="write a synthetic phantom dataset in the OASIS layout")
    p.add_argument("out", type=Path, help="the data root to write (must not exist, or be empty, unless --force)")
    p.add_argument("--subjects", type=int, default=20, help="subjects, split 80/10/10 into train/validate/test")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--slices", type=int, default=32, help="slices per subject (default 32)")
    p.add_argument("--volumes", action="store_true", help="also write NIfTI volumes (OUT/volumes, OUT/labels)")
    p.add_argument("--force", action="store_true", help="replace OUT if brainvq made it")
    p.set_defaults(handler=cmd_phantom)

    from brainvq.data.slicing import DEFAULT_SUBJECT_PATTERN

    p = sub.add_parser("slice-volumes", help="cut NIfTI/Analyze/MGH volumes into the OASIS slice layout")
    p.add_argument("input", type=Path, help="folder of volumes (searched recursively)")
    p.add_argument("out", type=Path, help="output data root (must not exist unless --force)")
    p.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default="axial", help="slicing axis")
    p.add_argument("--slices", type=int, help="N evenly spaced slices over the head (default 32)")
    p.add_argument("--range", help="A:B voxel indices of the canonical (RAS+) volume along the axis")
    p.add_argument("--size", type=int, default=256, help="output side in pixels (default 256)")
    p.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth")
    p.add_argument("--percentiles", default="0.5,99.5", help="robust intensity range (default 0.5,99.5)")
    p.add_argument("--labels", type=Path, help="folder of label volumes, matched by subject id (every subject)")
    p.add_argument("--label-map", default="0:0,1:85,2:170,3:255", help="label value:grey level pairs")
    p.add_argument(
        "--subject-pattern", default=DEFAULT_SUBJECT_PATTERN, help="regex; its first group is the subject id"
    )
    p.add_argument("--subjects-csv", type=Path, help="CSV with columns file,subject (instead of the pattern)")
    p.add_argument("--splits", default="0.8,0.1,0.1", help="train,validate,test fractions of subjects (0 allowed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject split")
    p.add_argument("--workers", type=int, help="processes (default: one per core)")
    p.add_argument(
        "--force", action="store_true", help="replace OUT if brainvq made it (once the new one is built)"
    )
    add_json_arg(p)
    p.set_defaults(handler=cmd_slice_volumes)

    p = sub.add_parser("check-data", help="report images, subjects, sizes and problems per split")
    p.add_argument("data", type=Path, help="a data root in the OASIS layout, or a folder of PNGs")
    add_json_arg(p)
    p.set_defaults(handler=cmd_check_data)
