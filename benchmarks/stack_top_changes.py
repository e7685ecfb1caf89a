"""How many top codes change from one slice to the next: real subjects against a run's stacks.

    python benchmarks/stack_top_changes.py --run runs/oasis --temperatures 1.15 1.0 0.85 [--guidance 0 1]

Real: the run's encoded validate top maps of subjects with every slice. Stacks: 8 stacks of top maps
only (no bottom maps, no decoding) from the stack prior at each temperature and guidance, seed 0. A
stack prior whose chains change far more codes than real subjects drifts; far fewer, it sticks.
"""

from __future__ import annotations

import argparse

import torch

import brainvq
from brainvq.codes import CodeMaps
from brainvq.sampling.background import run_background
from brainvq.sampling.maps import Guide
from brainvq.sampling.stacks import draw_stack_top_maps


def changed_share(stacks: torch.Tensor) -> float:
    """The share of codes (N, S, h, w) that differ from the previous slice's."""
    return float((stacks[:, 1:] != stacks[:, :-1]).float().mean())


def real_stacks(codes: CodeMaps, num_slices: int) -> torch.Tensor:
    """(R, S, h, w): the top maps of every subject with all ``num_slices`` slices, in slice order."""
    assert codes.top_indices is not None and codes.subjects is not None and codes.slices is not None
    stacks = []
    for subject in codes.subjects.unique():
        rows = (codes.subjects == subject).nonzero().flatten()
        rows = rows[codes.slices[rows].argsort()]
        if len(rows) == num_slices:
            stacks.append(codes.top_indices[rows].long())
    return torch.stack(stacks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0])
    parser.add_argument("--stacks", type=int, default=8)
    args = parser.parse_args()
    run = brainvq.load_run(args.run, "cpu")
    prior = run.require_stack_prior()
    num_slices = int(prior.config.num_slices)
    real = real_stacks(CodeMaps.load(run.root.code_file(run.config.data.val_split)), num_slices)
    print(f"real validate subjects ({len(real)}): {changed_share(real):.3f} of the top codes change per slice")
    for weight in args.guidance:
        guide = Guide(run.require_top_prior(), weight) if weight > 0 else None
        for temperature in args.temperatures:
            drawn = draw_stack_top_maps(
                prior, args.stacks, num_slices, run.top_code_shape, generator=torch.Generator().manual_seed(0),
                background=run_background(run), temperature=temperature, batch_size=args.stacks, guide=guide,
            )  # fmt: skip
            print(f"stacks, T {temperature:g}, guidance {weight:g}: {changed_share(drawn.codes):.3f}")


if __name__ == "__main__":
    main()
