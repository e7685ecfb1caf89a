"""Couplings of a stack's bottom-map draws, on the same top maps: adjacent-slice SSIM, the share of
bottom codes that change between neighbours, and the seconds each takes.

    python benchmarks/stack_couplings.py --run runs/oasis [--stacks 2] [--couplings none shared chain]

The stacks' top maps are drawn once (the run's stack settings, seed 0); each coupling then draws
the bottom maps with the same seed. Real subjects change about 37 % of their bottom codes per slice
(OASIS validate) at an adjacent-slice SSIM of 0.90.
"""

from __future__ import annotations

import argparse
import time

import torch

import brainvq
from brainvq.codes import decode_in_batches
from brainvq.evaluation.stacks import adjacent_ssim
from brainvq.sampling.maps import sample_codes
from brainvq.sampling.stacks import sample_stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--stacks", type=int, default=2)
    parser.add_argument("--couplings", nargs="+", default=["none", "shared", "chain"])
    args = parser.parse_args()
    run = brainvq.load_run(args.run, "cpu")
    drawn = sample_stacks(run, args.stacks, seed=0)
    count, slices = drawn.top_codes.shape[:2]
    tops = drawn.top_codes.reshape(count * slices, *drawn.top_codes.shape[2:])  # (N, S, h, w) -> (N*S, h, w)
    prior, how = run.require_prior(), drawn.sampling
    for coupling in args.couplings:
        started = time.perf_counter()
        codes = sample_codes(
            prior, count * slices, run.code_shape, generator=torch.Generator().manual_seed(1),
            condition=torch.arange(slices).repeat(count), context=tops, temperature=how.temperature,
            top_p=how.top_p, batch_size=slices, coupling=coupling,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        images = decode_in_batches(run.vqvae, codes, tops, slices, "cpu")[:, 0]  # (N*S, 1, H, W) -> (N*S, H, W)
        stacks = images.reshape(count, slices, *images.shape[1:]).numpy()  # (N*S, H, W) -> (N, S, H, W)
        maps = codes.reshape(count, slices, *codes.shape[1:])  # (N*S, h, w) -> (N, S, h, w)
        changed = float((maps[:, 1:] != maps[:, :-1]).float().mean())
        print(f"{coupling:7s} adjacent SSIM {adjacent_ssim(stacks).mean():.3f}  codes changed {changed:.3f}  "
              f"{seconds:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
