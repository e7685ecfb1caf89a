"""Seconds per 32-slice volume for each anomaly method, on this machine, with a trained run.

    python benchmarks/anomaly_speed.py --run runs/oasis --data ../shared/oasis [--split validate] [--rounds 2]

Takes the split's first subject (32 slices, the OASIS layout), and times each method of
:mod:`brainvq.anomaly.methods` on it (the whole stack in batches of 16, as ``anomaly`` runs it: the
encoding, the priors' passes, the redraws where the method has them, and the post-processing), after
the healthy reference and a warm-up pass. The fastest of ``--rounds`` is printed, in seconds per volume.
"""

from __future__ import annotations

import argparse
import time

import torch

import brainvq
from brainvq.anomaly.methods import available, method_maps
from brainvq.anomaly.operating import brain_of
from brainvq.anomaly.reference import healthy_reference
from brainvq.data.dataset import iterate_batches, load_split
from brainvq.data.layout import scan_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="validate")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", help="comma-separated (default: every method the run can make)")
    args = parser.parse_args()
    run = brainvq.load_run(args.run)
    reference = healthy_reference(run, args.data)
    dataset = load_split(
        args.data, args.split, in_memory=False, with_masks=scan_split(args.data, args.split).has_masks
    )
    first = dataset.records[0].subject
    volume = [i for i, r in enumerate(dataset.records) if r.subject == first]
    batches = list(iterate_batches(dataset, 16, volume))
    methods = args.methods.split(",") if args.methods else list(available(run))
    print(f"{len(volume)} slices of subject {first}; torch threads {torch.get_num_threads()}")
    for method in methods:
        times = []
        for _ in range(args.rounds + 1):  # the first is a warm-up
            started = time.perf_counter()
            for batch in batches:
                method_maps(run, reference, batch["image"], batch["slice"], brain_of(batch), [method])
            times.append(time.perf_counter() - started)
        print(f"{method:24s} {min(times[1:]) * 32 / len(volume):7.2f} s per 32-slice volume")


if __name__ == "__main__":
    main()
