"""Two presets from scratch, scored by one judge: the two-level against the one-level comparison.

    python benchmarks/compare_presets.py --data ../shared/oasis --out runs/compare
    python benchmarks/compare_presets.py --data ../shared/oasis --out runs/compare --table-only

Runs, one after another (so that each time-budgeted stage has the CPU to itself), what a user
would run by hand:

1. ``brainvq train-judge --data DATA --out OUT/judge --max-minutes M`` (skipped when OUT/judge/judge.json exists);
2. ``brainvq pipeline --data DATA --run OUT/PRESET --preset PRESET`` for each preset (the pipeline
   itself skips finished stages and resumes an interrupted one);
3. ``brainvq evaluate-samples --judge OUT/judge --real DATA --split SPLIT --run OUT/PRESET --n N
   [--seed S]`` for each preset and seed (skipped when its metrics file exists).

Then it prints one table (each realism score per seed, the real-vs-real floor, validate SSIM and
the seconds for 16 slices) and, for the last preset against the first, the targets of the
two-level issue: every realism score better (means over the seeds; diversity: nearer the real
one), the share of the gap to the floor that the Fréchet distance and the tissue error close,
SSIM within 0.01, 16 slices in 30 s. ``--table-only`` prints it from the files already there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

from brainvq.config import load_config
from brainvq.pipeline import realism_suffix
from brainvq.sample import resolve_sampling

LOWER = ("fd_judge", "kid_judge", "tissue_error", "slice_error", "memorised_fraction")
HIGHER = ("precision", "recall")
SCORES = ("fd_judge", "kid_judge", "precision", "recall", "tissue_error", "slice_error", "ms_ssim_diversity")


def brainvq(*args: str) -> None:
    """One CLI call, in this Python; stops the script when it fails."""
    command = [sys.executable, "-m", "brainvq.cli", *args]
    print("$ brainvq " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def realism_path(run: Path, split: str, seed: int) -> Path:
    """Where ``evaluate-samples --run`` writes its metrics, for the sampling settings of the run's
    own config (its preset's ``sample`` section)."""
    config = load_config(run / "config.yaml")
    sampling = resolve_sampling(config.sample, config.model.levels)
    return run / "metrics" / f"realism_{split}{realism_suffix(seed, sampling)}.json"


def run_all(args: argparse.Namespace) -> None:
    judge = args.out / "judge"
    if not (judge / "judge.json").is_file():
        brainvq(
            "train-judge", "--data", str(args.data), "--out", str(judge), "--max-minutes", str(args.judge_minutes)
        )
    for preset in args.presets:
        brainvq(
            "pipeline", "--data", str(args.data), "--run", str(args.out / preset), "--preset", preset, "--quiet"
        )
    for seed in args.seeds:
        for preset in args.presets:
            if realism_path(args.out / preset, args.split, seed).is_file():
                continue
            brainvq(
                "evaluate-samples", "--judge", str(judge), "--real", str(args.data), "--split", args.split,
                "--run", str(args.out / preset), "--n", str(args.n), "--seed", str(seed),
            )  # fmt: skip


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def table(args: argparse.Namespace) -> int:
    """Print the comparison; non-zero when a score is missing."""
    rows: dict[str, list[dict[str, Any]]] = {}
    floor: dict[str, Any] = {}
    for preset in args.presets:
        found = [load(realism_path(args.out / preset, args.split, seed)) for seed in args.seeds]
        rows[preset] = [r for r in found if r]
        floor = floor or next((r["reference"]["real"] for r in rows[preset]), {})
    if not floor or not all(rows.values()):
        print("missing realism scores: run without --table-only first", file=sys.stderr)
        return 1
    judges = {r["judge_hash"] for found in rows.values() for r in found}
    print(f"judge {', '.join(sorted(judges))}; split {args.split}; seeds {' / '.join(map(str, args.seeds))}")
    print("| set | " + " | ".join(SCORES) + " | SSIM | 16 slices (s) |")
    print("|---" * (len(SCORES) + 3) + "|")
    print("| real, half A (the floor) | " + " | ".join(f"{floor[k]:.4g}" for k in SCORES) + " | | |")
    ssims: dict[str, float | None] = {}
    sampling_seconds: dict[str, float | None] = {}
    for preset, found in rows.items():
        ssims[preset] = load(args.out / preset / "metrics" / f"evaluate_{args.split}.json").get("ssim")
        sampling_seconds[preset] = load(args.out / preset / "metrics" / "sampling.json").get("seconds")
        cells = [" / ".join(f"{r[k]:.4g}" for r in found) for k in SCORES]
        ssim = "?" if ssims[preset] is None else f"{ssims[preset]:.3f}"
        seconds = "?" if sampling_seconds[preset] is None else f"{sampling_seconds[preset]:.1f}"
        print(f"| {preset} | " + " | ".join(cells) + f" | {ssim} | {seconds} |")
    if len(rows) >= 2:
        targets(args, rows, floor, ssims, sampling_seconds)
    return 0


def targets(
    args: argparse.Namespace,
    rows: dict[str, list[dict[str, Any]]],
    floor: dict[str, Any],
    ssims: dict[str, float | None],
    sampling_seconds: dict[str, float | None],
) -> None:
    """The last preset against the first, on the means over the seeds."""
    base_name, new_name = args.presets[0], args.presets[-1]
    base = {k: mean(r[k] for r in rows[base_name]) for k in (*SCORES, "memorised_fraction")}
    new = {k: mean(r[k] for r in rows[new_name]) for k in (*SCORES, "memorised_fraction")}
    print(f"\n{new_name} against {base_name} (means over {len(args.seeds)} seed(s)):")
    for k in (*SCORES, "memorised_fraction"):
        if k in LOWER:
            better = new[k] < base[k] or new[k] == base[k] == 0
        elif k in HIGHER:
            better = new[k] > base[k]
        else:  # diversity: nearer the real value
            better = abs(new[k] - floor[k]) < abs(base[k] - floor[k])
        print(f"  {'ok ' if better else 'NO '} {k}: {new[k]:.4g} against {base[k]:.4g} (real {floor[k]:.4g})")
    for k in ("fd_judge", "tissue_error"):
        gap = base[k] - floor[k]
        closed = (base[k] - new[k]) / gap if gap > 0 else float("nan")
        print(
            f"  {'ok ' if closed >= 0.5 else 'NO '} {k} closes {closed:.0%} of the gap to the floor (target 50 %)"
        )
    base_ssim, new_ssim = ssims[base_name], ssims[new_name]
    if base_ssim is not None and new_ssim is not None:
        print(f"  {'ok ' if new_ssim >= base_ssim - 0.01 else 'NO '} SSIM {new_ssim:.3f} against {base_ssim:.3f}")
    seconds = sampling_seconds[new_name]
    if seconds is not None:
        print(f"  {'ok ' if seconds <= 30 else 'NO '} 16 slices in {seconds:.1f} s (target 30 s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--presets", nargs="+", default=["oasis-cpu", "oasis-cpu-2level"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--split", default="validate")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--judge-minutes", type=float, default=15)
    parser.add_argument("--table-only", action="store_true", help="print the table from the files already there")
    args = parser.parse_args()
    if not args.table_only:
        run_all(args)
    return table(args)


if __name__ == "__main__":
    sys.exit(main())
