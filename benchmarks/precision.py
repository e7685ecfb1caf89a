"""What ``precision: auto`` picks on this CPU, against both precisions' measured training speed.

    python benchmarks/precision.py [--steps 20] [--rounds 2]

Trains the seed-shaped VQ-VAE (one level, 256x256, batch 16) through brainvq's own loop in 32-true,
bf16-mixed and auto, alternating the variants for ``--rounds`` rounds, and prints images per second,
the probe's choice and reason (:mod:`brainvq.precision_probe`), and auto's rate as a share of the faster
of the two. The probe's cache is bypassed (a fresh measurement, as on a new machine).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from brainvq.data.dataset import load_split
from brainvq.data.phantom import make_phantom
from brainvq.precision_probe import cpu_precision
from training import brainvq_loop  # benchmarks/training.py: the real loop, timed per step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["BRAINVQ_CACHE"] = str(Path(folder) / "cache")  # measure afresh
        choice = cpu_precision()
        root = Path(folder) / "data"
        make_phantom(root, num_subjects=8, seed=0, size=256)
        dataset = load_split(root, "train", limit_images=(args.warmup + args.steps) * args.batch)
        rates: dict[str, list[float]] = {"32-true": [], "bf16-mixed": [], "auto": []}
        for _ in range(args.rounds):
            for precision in rates:
                rates[precision].append(brainvq_loop(dataset, args.batch, args.steps, args.warmup, precision))
    print(f"{torch.get_num_threads()} threads; auto -> {choice.precision}: {choice.reason}")
    best = {name: max(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"{name:11s} " + "  ".join(f"{v:6.1f}" for v in values) + f"  img/s (best {best[name]:.1f})")
    faster = max(best["32-true"], best["bf16-mixed"])
    print(f"auto / faster of the two: {best['auto'] / faster:.2f}")


if __name__ == "__main__":
    main()
