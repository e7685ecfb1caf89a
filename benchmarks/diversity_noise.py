"""How much the diversity score moves with the random pairs it is measured on.

    python benchmarks/diversity_noise.py --judge runs/judge --real ../shared/oasis --split validate \
        --folders runs/oasis-cpu-1level/samples/realism_n256_seed0 runs/oasis-cpu/samples/realism_n256_seed0_p0.7_topp1
    python benchmarks/diversity_noise.py --judge runs/judge --real ../shared/oasis --whole-subjects 8 16 --draws 4

``brainvq evaluate-samples`` reports ``ms_ssim_diversity``: the mean MS-SSIM of random pairs of a
set's images (``brainvq.evaluation.scores.diversity``), next to the same score for real half A of the split.
Two models are compared by how near each one's score is to the real one, so the score's own noise
sets how small a difference means anything. For each set (every folder given, and real half A,
split by subject as ``evaluate-samples`` splits it) this script measures the score with each
``--pairs`` count on ``--draws`` independent draws of pairs, and prints per set and count: the mean
over the draws, the standard deviation across draws (the noise of one score), and the standard
error that one score reports (``ms_ssim_diversity_se``), which should match it. Uses the CPU's
threads; about 30 s per 1,000 pairs of 256x256 slices on 2 cores.

``--whole-subjects 8 16``: the real floor for stacks. A set of N generated stacks holds N whole brains;
each count here draws that many whole real subjects of the split (every slice), ``--draws`` times, and
prints their diversity's mean and standard deviation across draws: how far the score of 8 stacks
may move with the brains drawn, whatever the pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from brainvq.data.dataset import load_split
from brainvq.evaluation.judge import load_judge
from brainvq.evaluation.reference import build_reference
from brainvq.evaluation.scores import ImageSet, dataset_pixels, diversity, folder_set


def noise(images: ImageSet, pairs: int, draws: int) -> dict[str, Any]:
    """The score on ``draws`` independent draws of ``pairs`` pairs (pair seeds 0, 1, ...)."""
    results = [diversity(images, pairs=pairs, seed=seed) for seed in range(draws)]
    means = [r.mean for r in results]
    return {
        "pairs": pairs,
        "draws": draws,
        "mean": statistics.fmean(means),
        "std_across_draws": statistics.stdev(means) if draws > 1 else None,
        "reported_se": statistics.fmean(r.standard_error for r in results),
        "scores": means,
    }


def whole_subjects(root: Path, split: str, count: int, draws: int) -> dict[str, Any]:
    """Diversity (1,000 pairs) of ``draws`` sets of ``count`` random whole subjects of the split."""
    real = load_split(root, split, in_memory=False)
    pixels, owners = dataset_pixels(real), torch.tensor([r.subject for r in real.records])
    subjects = owners.unique()
    generator = torch.Generator().manual_seed(count)
    means = []
    for draw in range(draws):
        chosen = subjects[torch.randperm(len(subjects), generator=generator)[:count]]
        means.append(diversity(ImageSet(f"{count} subjects", pixels[torch.isin(owners, chosen)]), seed=draw).mean)
    return {"subjects": count, "draws": draws, "mean": statistics.fmean(means),
            "std_across_draws": statistics.stdev(means) if draws > 1 else None, "scores": means}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", type=Path, required=True, help="the judge folder (to split the real set)")
    parser.add_argument("--real", type=Path, required=True, help="root holding the held-out split")
    parser.add_argument("--split", default="validate")
    parser.add_argument("--train", type=Path, default=None, help="root of the train split (default: --real)")
    parser.add_argument("--folders", type=Path, nargs="*", default=[], help="sample folders to score")
    parser.add_argument("--pairs", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument(
        "--whole-subjects", type=int, nargs="*", default=[], help="real sets of this many whole subjects"
    )
    args = parser.parse_args()
    if args.whole_subjects:
        floors = [whole_subjects(args.real, args.split, count, args.draws) for count in args.whole_subjects]
        for row in floors:
            print(f"real {args.split}, {row['subjects']} whole subjects x {row['draws']} draws: mean {row['mean']:.4f}, "
                  f"std across draws {row['std_across_draws']:.4f}", flush=True)  # fmt: skip
        print(json.dumps(floors))
        return

    judge = load_judge(args.judge)
    _, half_a, _, _ = build_reference(judge, args.real, args.split, args.train or args.real, args.judge / "cache")
    sets = {f"real {args.split} half A": half_a} | {str(f): folder_set(f, str(f)) for f in args.folders}
    report = {name: [noise(images, pairs, args.draws) for pairs in args.pairs] for name, images in sets.items()}
    for name, rows in report.items():
        for row in rows:
            spread = "-" if row["std_across_draws"] is None else f"{row['std_across_draws']:.4f}"
            print(f"{name}: {row['pairs']} pairs x {row['draws']} draws: mean {row['mean']:.4f}, "
                  f"std across draws {spread}, reported se {row['reported_se']:.4f}", flush=True)  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()
