"""Two presets from scratch, scored by one judge: the two-level against the one-level comparison.

    python benchmarks/compare_presets.py --data ../shared/oasis --out runs/compare
    python benchmarks/compare_presets.py --data ../shared/oasis --out runs/compare --table-only

Runs, one after another (so that each time-budgeted stage has the CPU to itself), what a user
would run by hand:

1. ``brainvq train-judge --data DATA --out OUT/judge`` (its default step budget; skipped when OUT/judge/judge.json exists);
2. ``brainvq pipeline --data DATA --run OUT/PRESET --preset PRESET`` for each preset (the pipeline
   itself skips finished stages and resumes an interrupted one);
3. ``brainvq evaluate-samples --judge OUT/judge --real DATA --split SPLIT --run OUT/PRESET --n N
   [--seed S]`` for each preset and seed (skipped when its metrics file exists).

Then it prints one table (each realism score per seed, the real-vs-real floor, validate SSIM and
the seconds for 16 slices) and, for the last preset against the first, the targets of the
two-level issue: every realism score better (means over the seeds; diversity: nearer the real
one), the share of the gap to the floor that the Fréchet distance and the tissue error close,
SSIM within 0.01, 16 slices in 30 s. ``--table-only`` prints it from the files already there.

The floor comes twice: the whole real half A (576 OASIS validate slices) and real half-A slices
drawn at the samples' own size and slice mix (``real_same_n``, the mean of 20 draws). The
Fréchet distance and the tissue error of a set grow as it gets smaller, so the samples (N of
them) are measured against the second: the score an ideal generator of N slices would get. The
gap closed to the whole half A is printed beside it. ``--set-run PRESET KEY=VALUE`` (repeatable)
reads a preset's scores for other sampling settings than its saved config's, e.g. for a run made
before its preset's ``sample`` section changed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from math import sqrt
from pathlib import Path
from statistics import mean
from typing import Any

from brainvq.config import load_config
from brainvq.sampling import resolve_sampling
from brainvq.sampling.files import realism_suffix

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


def realism_path(run: Path, split: str, seed: int, overrides: list[str] | None = None) -> Path:
    """Where ``evaluate-samples --run`` writes its metrics, for the sampling settings of the run's
    own config (its preset's ``sample`` section) with ``overrides`` (``sample.top_p=0.7``) on top."""
    config = load_config(run / "config.yaml", overrides)
    sampling = resolve_sampling(config.sample, config.model.levels)
    return run / "metrics" / f"realism_{split}{realism_suffix(seed, sampling)}.json"


def run_all(args: argparse.Namespace) -> None:
    judge = args.out / "judge"
    if not (judge / "judge.json").is_file():
        brainvq("train-judge", "--data", str(args.data), "--out", str(judge))
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
        overrides = [value for name, value in args.set_run or [] if name == preset]
        found = [load(realism_path(args.out / preset, args.split, seed, overrides)) for seed in args.seeds]
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
    same_n = same_size_floor(rows)
    if same_n:
        cells = ["–" if same_n.get(k) is None else f"{same_n[k]:.4g}" for k in SCORES]
        print(
            f"| real, half A at n = {same_n['n']} (mean of {same_n['draws']} draws) | "
            + " | ".join(cells)
            + " | | |"
        )
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
        targets(args, rows, floor, same_n, ssims, sampling_seconds)
    return 0


def same_size_floor(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The real floor at the samples' size (``reference.real_same_n``), when every score file has it
    for the same n (files written before it existed do not: re-run ``evaluate-samples`` to add it)."""
    floors = [r["reference"].get("real_same_n") for found in rows.values() for r in found]
    if not floors or any(f is None for f in floors) or len({f["n"] for f in floors}) > 1:
        return {}
    return floors[0]  # seeded draws: the same for every file with this n and slice mix


def targets(
    args: argparse.Namespace,
    rows: dict[str, list[dict[str, Any]]],
    floor: dict[str, Any],
    same_n: dict[str, Any],
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
        noise = diversity_noise(rows[new_name], rows[base_name], floor) if k == "ms_ssim_diversity" else ""
        print(
            f"  {'ok ' if better else 'NO '} {k}: {new[k]:.4g} against {base[k]:.4g} (real {floor[k]:.4g}){noise}"
        )
    for k in ("fd_judge", "tissue_error"):
        closed = {
            name: gap_closed(base[k], new[k], f[k]) for name, f in (("whole", floor), ("same_n", same_n)) if f
        }
        judged = closed.get("same_n", closed["whole"])
        where = f"at n = {same_n['n']}, {same_n[k]:.4g}" if same_n else f"{floor[k]:.4g}"
        whole = f"; {closed['whole']:.0%} of the gap to the whole half A, {floor[k]:.4g}" if same_n else ""
        print(
            f"  {'ok ' if judged >= 0.5 else 'NO '} {k} closes {judged:.0%} of the gap to the real floor"
            f" ({where}; target 50 %){whole}"
        )
    base_ssim, new_ssim = ssims[base_name], ssims[new_name]
    if base_ssim is not None and new_ssim is not None:
        print(f"  {'ok ' if new_ssim >= base_ssim - 0.01 else 'NO '} SSIM {new_ssim:.3f} against {base_ssim:.3f}")
    seconds = sampling_seconds[new_name]
    if seconds is not None:
        print(f"  {'ok ' if seconds <= 30 else 'NO '} 16 slices in {seconds:.1f} s (target 30 s)")


def diversity_noise(new: list[dict[str, Any]], base: list[dict[str, Any]], real: dict[str, Any]) -> str:
    """The standard errors of the three diversity scores (each over its random pairs), when the files
    have them (``ms_ssim_diversity_se``, written since scores use 1,000 pairs)."""
    if not all("ms_ssim_diversity_se" in r for r in (*new, *base, real)):
        return ""

    def error(found: list[dict[str, Any]]) -> float:  # of the mean over the seeds
        return sqrt(sum(r["ms_ssim_diversity_se"] ** 2 for r in found)) / len(found)

    return f"; standard errors {error(new):.4f}, {error(base):.4f} and {real['ms_ssim_diversity_se']:.4f}"


def gap_closed(base: float, new: float, floor: float) -> float:
    """The share of the distance from ``base`` down to ``floor`` that ``new`` covers."""
    gap = base - floor
    return (base - new) / gap if gap > 0 else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--presets", nargs="+", default=["oasis-cpu-1level", "oasis-cpu"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--split", default="validate")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--table-only", action="store_true", help="print the table from the files already there")
    parser.add_argument(
        "--set-run",
        nargs=2,
        action="append",
        metavar=("PRESET", "KEY=VALUE"),
        help="with --table-only: read PRESET's scores for this sampling setting instead of its saved config's"
        " (e.g. oasis-cpu sample.top_p=0.7, for a run made before its preset changed)",
    )
    args = parser.parse_args()
    if not args.table_only:
        run_all(args)
    return table(args)


if __name__ == "__main__":
    sys.exit(main())
