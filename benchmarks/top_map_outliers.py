"""Top maps with no background: how often a two-level run's top prior draws them, and what they cost.

    python benchmarks/top_map_outliers.py --run runs/oasis-cpu --seeds 0 1 2 --top-map-top-p 1 0.95 0.9
    python benchmarks/top_map_outliers.py --run runs/oasis-cpu --judge runs/judge --data ../shared/oasis \
        --samples runs/oasis-cpu/samples/realism_n256_seed0_nocheck

Real OASIS slices are black around the head, so the outer ring of every real top map (its outer
``--ring`` cells) holds the same few background codes: in the run's encoded ``--reference`` split
(train, as ``brainvq.background`` uses when sampling), each map agrees with the per-position
commonest code on a share of its ring between the split's minimum and 1. A drawn top map whose
share is more than ``--margin`` below that minimum has brain where the background should be, and
its decoded slice is brain texture to the frame's edge. ``brainvq sample`` draws such maps again
unless told ``--no-background-check``; this script measures the maps before that check.

The first form draws ``--n`` top maps (the real split's mix of slice indices, as ``brainvq
evaluate-samples`` does) for each seed and top-map nucleus, and counts such maps. The second
takes a folder that ``brainvq evaluate-samples --run`` wrote (its ``samples.json`` holds the seed,
the sampling and the slices), draws its top maps again (the top maps are drawn before the bottom
maps, so they are the samples' own), and reports the tissue error of the judge with every sample
and without the flagged ones. It prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from brainvq.codes import CodeMaps
from brainvq.evaluation.scores import matching_slices
from brainvq.runs import load_run
from brainvq.sampling import draw_top_maps, slice_conditions
from brainvq.sampling.background import Background


def unchecked_top_maps(
    run: Any, slices: list[int], seed: int, top_p: float, temperature: float = 1.0
) -> torch.Tensor:
    """The top maps ``brainvq.sample`` draws first for these slices, seed and top-map sampling,
    before its background check redraws any (the check is what this script measures)."""
    top_prior = run.require_top_prior()
    condition = slice_conditions(len(slices), top_prior, slices)
    return draw_top_maps(
        top_prior, len(slices), run.top_code_shape, None, generator=torch.Generator().manual_seed(seed),
        condition=condition, top_p=top_p, temperature=temperature, batch_size=16,
    ).codes  # fmt: skip


def count_outliers(
    run: Any, background: Background, real_slices: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    slices = matching_slices(real_slices, args.n)
    drawn = {}
    for top_p in args.top_map_top_p:
        for seed in args.seeds:
            flagged = (
                torch.nonzero(background.flagged(unchecked_top_maps(run, slices, seed, top_p))).flatten().tolist()
            )
            drawn[f"top_p {top_p}, seed {seed}"] = {"flagged": len(flagged), "of": args.n, "which": flagged}
    share = background.real_share
    return {"real_min": float(share.min()), "real_median": float(share.median()), "limit": background.limit,
            "drawn": drawn}  # fmt: skip


def tissue_without_outliers(run: Any, background: Background, args: argparse.Namespace) -> dict[str, Any]:
    from brainvq.evaluation.judge import load_judge
    from brainvq.evaluation.reference import build_reference
    from brainvq.evaluation.scores import folder_set, judge_set, per_slice_fractions, tissue_error

    listing = Path(args.samples) / "samples.json"
    if not listing.is_file():
        raise SystemExit(
            f"{listing}: not found (--samples takes a folder that `brainvq evaluate-samples --run` wrote)"
        )
    record = json.loads(listing.read_text())
    if record.get("background_check"):
        raise SystemExit(f"{listing}: drawn with the background check, so no sample is flagged (draw with "
                         "`--no-background-check` to compare)")  # fmt: skip
    slices = [int(s) for s in record["slices"]]
    top = unchecked_top_maps(run, slices, record["seed"], record["top_map_top_p"], record["top_map_temperature"])
    flagged = background.flagged(top)
    judge = load_judge(args.judge, "cpu")
    reference = build_reference(judge, args.data, args.split, args.data, Path(args.judge) / "cache")[0]
    images = folder_set(args.samples)
    judged = judge_set(judge, images)
    assert images.slices is not None and len(images) == len(flagged)
    out: dict[str, Any] = {"flagged": torch.nonzero(flagged).flatten().tolist()}
    for name, keep in (("all", torch.ones_like(flagged)), ("without_flagged", ~flagged)):
        table = per_slice_fractions(judged.fractions[keep], images.slices[keep], reference.num_slices)
        out[f"tissue_error_{name}"] = tissue_error(reference.real_table, table)
    brain = judged.fractions.sum(1)  # (N,) the judge's CSF + GM + WM share of each image
    out["brain_fraction_flagged"] = [round(float(b), 3) for b in brain[flagged]]
    out["brain_fraction_median"] = float(brain.median())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--top-map-top-p", type=float, nargs="+", default=[1.0, 0.95, 0.9])
    parser.add_argument("--ring", type=int, help="ring width in top-map cells (default: as sampling checks it)")
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--samples", help="a folder written by `brainvq evaluate-samples --run`")
    parser.add_argument("--judge")
    parser.add_argument("--data")
    parser.add_argument("--split", default="validate", help="the real split that scores the tissue error")
    parser.add_argument("--reference", default="train", help="the encoded split whose top maps set the ring")
    args = parser.parse_args()
    run = load_run(args.run, "cpu")
    if run.levels != 2:
        raise SystemExit(f"{args.run}: not a two-level run (model.levels is 1)")
    codes = CodeMaps.load(run.root.code_file(args.reference))  # the real top maps the ring is judged by
    assert codes.top_indices is not None
    background = Background.of(codes.top_indices, args.ring, args.margin)  # real top maps (N, h/t, w/t)
    if args.samples:
        if not (args.judge and args.data):
            raise SystemExit("--samples needs --judge and --data")
        result = tissue_without_outliers(run, background, args)
    else:
        result = count_outliers(run, background, codes.slices, args)
    print(json.dumps({"run": args.run, **result}, indent=2))


if __name__ == "__main__":
    main()
