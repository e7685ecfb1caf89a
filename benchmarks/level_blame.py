"""Which prior of a two-level run makes the samples' tissue error: the top map's or the bottom map's.

    python benchmarks/level_blame.py --run runs/oasis-cpu --judge runs/judge --real ../shared/oasis --n 256

``brainvq evaluate-samples --run`` scores slices whose top and bottom maps are both drawn. This
script scores two more sets, made from ``--n`` real slices of half A of the held-out split (drawn
for the same mix of slice indices as the samples; half B is what every set is scored against):

* ``real top, drawn bottom``: each real slice's own top map (encoded by the run's VQ-VAE), then a
  bottom map drawn by the bottom prior conditioned on it (and on the slice), decoded. What is left
  of the tissue error here is the bottom prior's (and the decoder's) doing;
* ``real top, real bottom``: the same slices decoded from both of their own maps (reconstructions):
  the decoder's share alone.

Compare with the run's own realism scores (both maps drawn): the difference from the first set is
the top prior's share. The bottom maps are drawn with the run's sampling settings unless ``--top-p``
or ``--temperature`` say otherwise. It prints one line per set and the scores as JSON, and with
``--figures DIR`` writes the per-slice tissue fractions of the first set there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from brainvq.codes import decode_in_batches, encode_levels
from brainvq.data.dataset import load_split
from brainvq.evaluation.judge import load_judge
from brainvq.evaluation.reference import build_reference, draw_like, real_same_n, score_set
from brainvq.evaluation.samples import tissue_figure
from brainvq.evaluation.scores import ImageSet, matching_slices, to_uint8
from brainvq.runs import load_run
from brainvq.sampling import resolve_sampling, sample_codes, slice_conditions

SHOWN = ("fd_judge", "precision", "recall", "tissue_error", "slice_error", "ms_ssim_diversity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a two-level run with both priors trained")
    parser.add_argument("--judge", type=Path, required=True)
    parser.add_argument("--real", type=Path, required=True, help="root holding the held-out split and train")
    parser.add_argument("--split", default="validate")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=None, help="the bottom map's nucleus (default: the run's)")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--figures", type=Path, default=None)
    args = parser.parse_args()

    run = load_run(args.run, device="cpu")
    if run.levels != 2:
        parser.error(f"{args.run}: a one-level run has no top map to hold fixed")
    prior, vqvae = run.require_prior(), run.vqvae
    how = resolve_sampling(run.config.sample, 2, args.temperature, args.top_p)
    judge = load_judge(args.judge, device="cpu")
    cache = args.judge / "cache"
    reference, half_a, half_a_judged, half_a_nearest = build_reference(
        judge, args.real, args.split, args.real, cache
    )
    assert half_a.slices is not None, "the split's file names give no slice indices"
    wanted = torch.tensor(
        matching_slices(load_split(args.real, args.split, in_memory=False).slice_indices(), args.n)
    )
    pick = draw_like(half_a.slices, wanted, torch.Generator().manual_seed(args.seed))
    slices = half_a.slices[pick]
    real_bottom, real_top = [], []
    for s in range(0, len(pick), 32):
        bottom, top = encode_levels(vqvae, half_a.images(pick[s : s + 32].tolist()))
        assert top is not None  # two levels
        real_bottom.append(bottom)
        real_top.append(top)
    bottom, top = torch.cat(real_bottom), torch.cat(real_top)  # (n, 64, 64), (n, 16, 16)
    drawn = sample_codes(
        prior, len(pick), run.code_shape, generator=args.seed, condition=slice_conditions(len(pick), prior, slices),
        context=top, temperature=how.temperature, top_p=how.top_p, progress=True,
    )  # fmt: skip
    sets = {
        "real top, drawn bottom": ImageSet(
            "real top, drawn bottom", to_uint8(decode_in_batches(vqvae, drawn, top, 32, "cpu")), slices
        ),
        "real top, real bottom": ImageSet(
            "real top, real bottom", to_uint8(decode_in_batches(vqvae, bottom, top, 32, "cpu")), slices
        ),
    }
    report = {"run": str(args.run), "seed": args.seed, "n": len(pick), "bottom_temperature": how.temperature,
              "bottom_top_p": how.top_p, "judge_hash": judge.hash}  # fmt: skip
    floor = real_same_n(reference, half_a, half_a_judged, half_a_nearest[0], slices)  # both sets share it
    for name, images in sets.items():
        scores = score_set(judge, images, reference)  # the reference is built once, above
        if args.figures is not None and name == "real top, drawn bottom":
            tissue_figure(reference.real_table, scores["_table"], args.figures / "tissue_fractions.png", name)
        report[name] = {key: scores[key] for key in SHOWN} | {"real_same_n": floor["tissue_error"]}
        print(name + ": " + ", ".join(f"{k} {scores[k]:.4f}" for k in SHOWN if scores[k] is not None), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
