"""Seconds to draw one 32-slice stack with a run's stack prior, on this machine.

    python benchmarks/stack_speed.py --run runs/oasis [--stacks 1] [--rounds 2] [--candidates M] [--guidance W]
        [--rivals -4 -2 2 4] [--first-map top|stack] [--unpaired]

Draws ``--stacks`` stacks (the top maps slice after slice with the stack prior's key/value cache, then
all bottom maps of a stack in one batch, then the decoder) ``--rounds`` times after a warm-up, and prints
the fastest round's seconds per stack, split into top maps, bottom maps and decoding. ``--candidates``,
``--guidance``, ``--rivals`` and ``--first-map`` time other settings than the run's ``sample.stack_*``:
compare them in one session, as ratios. ``--unpaired`` steps the stack prior and its guide one after the
other instead of as one (:mod:`brainvq.sampling.paired`), the baseline for that speed-up.
"""

from __future__ import annotations

import argparse

import torch

import brainvq
import brainvq.sampling.maps
from brainvq.sampling.stacks import sample_stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--stacks", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--candidates", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--rivals", type=int, nargs="*")
    parser.add_argument("--first-map", choices=("top", "stack"))
    parser.add_argument("--unpaired", action="store_true", help="step the prior and its guide one after the other")
    args = parser.parse_args()
    if args.unpaired:
        brainvq.sampling.maps.paired_sampler = lambda *args, **kwargs: None
    run = brainvq.load_run(args.run)
    settings = dict(
        candidates=args.candidates, guidance=args.guidance, rivals=args.rivals, first_map=args.first_map
    )
    results = [sample_stacks(run, args.stacks, seed=round_, **settings) for round_ in range(args.rounds + 1)][1:]
    best = min(results, key=lambda r: r.seconds)
    decoding = best.seconds - best.top_seconds - best.bottom_seconds
    print(
        f"torch threads {torch.get_num_threads()}; {args.stacks} stack(s) of {best.images.shape[1]} slices; "
        f"best of {best.candidates}, guidance {best.guidance:g}, slice 0 from the {best.first_map} prior, "
        f"{'unpaired' if args.unpaired else 'paired'} steps"
    )
    print(
        f"per stack: {best.seconds / args.stacks:.1f} s (top maps {best.top_seconds / args.stacks:.1f} s, "
        f"bottom maps {best.bottom_seconds / args.stacks:.1f} s, decoding {decoding / args.stacks:.1f} s)"
    )


if __name__ == "__main__":
    main()
