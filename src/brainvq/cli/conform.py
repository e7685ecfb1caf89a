"""Scans in the model's space: ``conform`` and ``template``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from brainvq.cli.common import Commands, add_json_arg


def cmd_conform(args: argparse.Namespace) -> int:
    from brainvq.conform.scans import ConformOptions, conform
    from brainvq.data.slicing import parse_label_map

    options = ConformOptions(split=args.split, rim=args.rim, transform=args.transform,
                             label_map=tuple(parse_label_map(args.label_map).items()))  # fmt: skip
    log = (lambda message: None) if args.json else print
    summary = conform(args.input, args.out, args.like, options, labels_dir=args.labels,
                      subject_pattern=args.subject_pattern, force=args.force, log=log)  # fmt: skip
    result = {"out": str(summary.out), "volumes": summary.volumes, "ok": summary.ok,
              "seconds": round(summary.seconds, 1), "records": summary.records}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"conformed {summary.volumes} volumes ({summary.ok} ok) to {summary.out} in {summary.seconds:.1f} s; "
              f"see {summary.out / 'conform.json'}")  # fmt: skip
    return 0


def cmd_template(args: argparse.Namespace) -> int:
    from brainvq.conform.template import TEMPLATE_FILE, build_template
    from brainvq.runs import RunDir

    run = RunDir(args.run)
    if not run.root.is_dir():
        from brainvq.errors import RunError

        raise RunError(f"{run.root}: run directory does not exist")
    template = build_template(args.data, args.split)
    template.save(run.root / TEMPLATE_FILE)
    print(f"{run.root / TEMPLATE_FILE}: the mean of {template.subjects} subjects' {template.mean.shape[0]} slices")
    return 0


def add_commands(sub: Commands) -> None:
    from brainvq.data.slicing import DEFAULT_SUBJECT_PATTERN

    p = sub.add_parser("conform", help="register scans to a run's (or a data root's) template and cut its slices")
    p.add_argument("input", type=Path, help="a volume, or a folder of volumes (NIfTI, Analyze, MGH)")
    p.add_argument("out", type=Path, help="the data root to write, in the OASIS layout")
    p.add_argument("--like", type=Path, required=True, help="a run directory or a data root in the OASIS layout")
    p.add_argument("--split", default="test", help="the split the slices go to (default test)")
    p.add_argument(
        "--labels", type=Path, help="folder of label volumes, matched by subject id (nearest neighbour)"
    )
    p.add_argument("--label-map", default="0:0,1:85,2:170,3:255", help="label value:grey level pairs")
    p.add_argument(
        "--subject-pattern", default=DEFAULT_SUBJECT_PATTERN, help="regex; its first group is the subject id"
    )
    p.add_argument("--transform", choices=("rigid", "affine"), default="rigid",
                   help="rigid (default, measured best on OASIS) or rigid then affine (12 parameters)")  # fmt: skip
    p.add_argument("--rim", choices=("keep", "template"), default="keep",
                   help="template: give skull-stripped scans the template's bright rim outside the brain")  # fmt: skip
    p.add_argument(
        "--force", action="store_true", help="replace OUT if brainvq made it (once the new one is built)"
    )
    add_json_arg(p)
    p.set_defaults(handler=cmd_conform)

    p = sub.add_parser("template", help="store the template of a run's training data in the run (for conform)")
    p.add_argument("--run", type=Path, required=True, help="the run directory")
    p.add_argument("--data", type=Path, required=True, help="the data root the run was trained on")
    p.add_argument("--split", default="train", help="the split to average (default train)")
    p.set_defaults(handler=cmd_template)
