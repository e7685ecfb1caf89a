"""How many top codes change from one slice to the next, and how alike stacks are: real subjects
against a run's stacks, top maps only (judge-free, no bottom maps, no decoding).

    python benchmarks/stack_top_changes.py --run runs/oasis --temperatures 1.15 1.0 0.85 [--guidance 0 1]
    python benchmarks/stack_top_changes.py --run runs/oasis --temperatures 1.2 --guidance 0.5 --candidates 4
    python benchmarks/stack_top_changes.py --run runs/oasis --temperatures 1.2 --guidance 0.5 0.25 --candidates 4 \
        --rivals -4 -2 2 4 --first-temperature 1.15 --stacks 16 --level

Real: the run's encoded validate top maps of subjects with every slice. Stacks: 8 stacks of top maps
from the stack prior at each temperature and guidance, seed 0 (``--stacks``, ``--seed``); slice 0 from
the stack prior, or with ``--candidates`` (the best of that many by index, ``sample.stack_rivals``) or
``--first top`` from the top prior as ``sample --volumes`` draws it. A stack prior whose chains change
far more codes than real subjects drifts; far fewer, it sticks. Agreement (the share of equal codes
inside the head, where either map is not a background code of the real maps' border) of slice k in two
stacks (``between``: high when the stacks drift toward one typical brain), of slices k and k + S/4 in
one stack (``within``: high when the anatomy moves too little) and of neighbours (``adjacent``).
``--level`` adds each map's slice index as the independent top prior reads it (the index of the
highest likelihood of the whole map), as the mean distance to its own index: real maps give the floor;
a chain that forgets where in the brain it is scores far above it.
"""

from __future__ import annotations

import argparse

import torch

import brainvq
from brainvq.codes import CodeMaps
from brainvq.sampling.background import run_background
from brainvq.sampling.maps import Guide, draw_top_maps
from brainvq.sampling.stacks import Selection, draw_stack_top_maps

PAIRS = 400


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


def background_codes(real: torch.Tensor) -> torch.Tensor:
    """The codes that make up at least 2 % of the real maps' border (R, S, h, w): the background.

    Not :class:`brainvq.sampling.background.Background`: that reference compares each ring cell with
    the commonest code at that position, and its ring (3 cells of 16) reaches the head, so its codes
    taken as a set (51 on the proxy run of docs/experiments/2026-12-07-stack-budget.md, head codes
    among them) would call much of the head background (real agreement between stacks 0.073, not 0.238)."""
    border = torch.cat([real[..., 0, :].flatten(), real[..., -1, :].flatten(),
                        real[..., :, 0].flatten(), real[..., :, -1].flatten()])  # fmt: skip
    counts = torch.bincount(border)
    return torch.nonzero(counts >= 0.02 * len(border)).flatten()


def agreement(stacks: torch.Tensor, background: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Mean share of equal codes inside the head for ``PAIRS`` random pairs of each kind (module doc)."""
    generator = torch.Generator().manual_seed(seed)
    count, slices = stacks.shape[:2]
    stack, index = (
        torch.randint(count, (PAIRS,), generator=generator),
        torch.randint(slices, (PAIRS,), generator=generator),
    )
    other = (stack + torch.randint(1, count, (PAIRS,), generator=generator)) % count
    gap = slices // 4
    start = torch.randint(slices - gap, (PAIRS,), generator=generator)

    return {
        "between": share(stacks[stack, index], stacks[other, index], background),
        "within": share(stacks[stack, start], stacks[stack, start + gap], background),
        "adjacent": share(stacks[stack, start], stacks[stack, start + 1], background),
    }


def share(a: torch.Tensor, b: torch.Tensor, background: torch.Tensor) -> float:
    """Mean share of equal codes inside the head over pairs of maps (P, h, w)."""
    head = ~torch.isin(a, background) | ~torch.isin(b, background)
    return float((((a == b) & head).sum((1, 2)) / head.sum((1, 2)).clamp_min(1)).mean())


def between_by_quarter(stacks: torch.Tensor, background: torch.Tensor) -> list[float]:
    """Agreement between stacks at the same slice, every pair of stacks, in each quarter of the slices:
    rising along the stack when the chains drift toward one typical brain."""
    count, slices = stacks.shape[:2]
    first, second = torch.triu_indices(count, count, 1)
    quarters = torch.arange(slices).chunk(4)
    return [
        share(stacks[first][:, quarter].flatten(0, 1), stacks[second][:, quarter].flatten(0, 1), background)
        for quarter in quarters
    ]  # (pairs, q, h, w) -> (pairs * q, h, w)


@torch.no_grad()
def level_error(stacks: torch.Tensor, top_prior: torch.nn.Module) -> float:
    """Mean |k_hat - k| over the maps (N, S, h, w), k_hat the index at which the top prior finds the
    whole map likeliest."""
    count, slices = stacks.shape[:2]
    maps = stacks.flatten(0, 1)  # (N, S, h, w) -> (N*S, h, w), slice k at rows k, S + k, ...
    reader = Selection(top_prior, 1)
    likelihoods = torch.stack(
        [torch.cat([reader.log_likelihood(part, index) for part in maps.split(64)]) for index in range(slices)], 1
    )  # S x (N*S,) -> (N*S, S)
    own = torch.arange(slices).repeat(count)
    return float((likelihoods.argmax(1) - own).abs().float().mean())


def describe(name: str, stacks: torch.Tensor, background: torch.Tensor, top_prior: torch.nn.Module | None) -> str:
    scores, quarters = agreement(stacks, background), between_by_quarter(stacks, background)
    level = f"; level error {level_error(stacks, top_prior):.2f} slices" if top_prior is not None else ""
    return (f"{name}: {changed_share(stacks):.3f} of the top codes change per slice; agreement between stacks "
            f"{scores['between']:.3f}, within (k, k+S/4) {scores['within']:.3f}, adjacent {scores['adjacent']:.3f}; "
            f"between by quarter {' '.join(f'{q:.3f}' for q in quarters)}{level}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0])
    parser.add_argument("--stacks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=1, help="each later slice: the best of N by index")
    parser.add_argument("--first", choices=["top", "stack"], help="which prior draws slice 0 (default: top with "
                        "--candidates above 1, else stack)")  # fmt: skip
    parser.add_argument("--independent", action="store_true", help="also slices drawn one by one by the top prior")
    parser.add_argument("--rivals", type=int, nargs="*", help="with --candidates: index offsets (default: the run's "
                        "sample.stack_rivals)")  # fmt: skip
    parser.add_argument("--first-temperature", type=float, help="slice 0 from the top prior at this temperature "
                        "(default: the run's sample.top_map_temperature)")  # fmt: skip
    parser.add_argument(
        "--level", action="store_true", help="also each map's slice index as the top prior reads it"
    )
    args = parser.parse_args()
    run = brainvq.load_run(args.run, "cpu")
    prior = run.require_stack_prior()
    num_slices = int(prior.config.num_slices)
    real = real_stacks(CodeMaps.load(run.root.code_file(run.config.data.val_split)), num_slices)
    background = background_codes(real)
    top_prior, reference = run.require_top_prior(), run_background(run)  # the run's background check, once
    reader = top_prior if args.level else None
    print(describe(f"real validate subjects ({len(real)})", real, background, reader))
    rivals = tuple(run.config.sample.stack_rivals if args.rivals is None else args.rivals)
    first_temperature = args.first_temperature or run.config.sample.top_map_temperature
    if args.independent:  # as single slices: each index drawn alone (only ``between`` compares with real)
        condition = torch.arange(num_slices).repeat(args.stacks)
        loose = draw_top_maps(top_prior, len(condition), run.top_code_shape, reference, condition=condition,
                              generator=torch.Generator().manual_seed(args.seed), batch_size=num_slices,
                              temperature=run.config.sample.top_map_temperature).codes  # fmt: skip
        stacked = loose.view(args.stacks, num_slices, *loose.shape[1:])  # (N*S, h, w) -> (N, S, h, w)
        print(
            describe(
                f"independent slices, T {run.config.sample.top_map_temperature:g}", stacked, background, reader
            )
        )
    for weight in args.guidance:
        guide = Guide(top_prior, weight) if weight > 0 else None
        for temperature in args.temperatures:
            generator, first, selection = torch.Generator().manual_seed(args.seed), None, None
            first_by = args.first or ("top" if args.candidates > 1 else "stack")
            if first_by == "top":  # slice 0 as a single slice's
                first = draw_top_maps(top_prior, args.stacks, run.top_code_shape, reference, generator=generator,
                                      condition=torch.zeros(args.stacks, dtype=torch.long),
                                      temperature=first_temperature, batch_size=args.stacks).codes  # fmt: skip
            if args.candidates > 1:  # as sample --volumes: the best of N by index
                selection = Selection(top_prior, args.candidates, rivals)
            drawn = draw_stack_top_maps(
                prior, args.stacks, num_slices, run.top_code_shape, generator=generator, first=first,
                selection=selection, background=reference, temperature=temperature, guide=guide,
            )  # fmt: skip
            print(describe(f"stacks, T {temperature:g}, guidance {weight:g}, best of {args.candidates}, first {first_by}",
                           drawn.codes, background, reader))  # fmt: skip


if __name__ == "__main__":
    main()
