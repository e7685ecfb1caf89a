"""What each level of a two-level run carries, and whether its bottom prior spoils a correct top map.

    python benchmarks/two_levels.py --run runs/oasis-2level --data ../shared/oasis --split validate
    python benchmarks/two_levels.py --run runs/oasis-2level --data ../shared/oasis --split validate --judge runs/judge

``n`` slices of the split are picked for the slice indices the sampler asks for (spread over the
volume, one random subject each). Without ``--judge`` (seconds), SSIM on those slices of:

* ``recon_ssim``: decode(top, bottom) against the slice;
* ``top_swap_ssim``: decode(the next slice's top map, bottom) against decode(top, bottom) (a slice
  of about the same index from another subject): 1.0 means the decoder ignores the top map;
* ``top_only_ssim``: the top map decoded alone (``decode_top``, bottom vectors zeroed) against
  the slice: what the top map carries by itself.

With ``--judge`` (minutes), the realism scores of ``brainvq evaluate-samples`` (no references) for

* ``oracle_top``: each slice's own top map with a bottom map drawn by the bottom prior;
* ``sampled``: both maps drawn, the normal path, for the same slice indices and the same n.

If ``oracle_top`` scores about as badly as ``sampled``, the bottom prior is what limits the samples.
It prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from brainvq.codes import decode_levels
from brainvq.data.dataset import load_split
from brainvq.evaluation.metrics import ssim_per_image
from brainvq.evaluation.reference import build_reference, score_set
from brainvq.evaluation.scores import ImageSet, to_uint8
from brainvq.runs import load_run
from brainvq.sampling import sample_codes, slice_conditions


def pick_slices(slices: torch.Tensor, wanted: torch.Tensor, seed: int) -> torch.Tensor:
    """One random image index per wanted slice index."""
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for index in wanted.tolist():
        candidates = torch.nonzero(slices == index).flatten()
        picks.append(candidates[torch.randint(len(candidates), (1,), generator=generator)])
    return torch.cat(picks)


def in_batches(fn: Any, *tensors: torch.Tensor, size: int = 32) -> torch.Tensor:
    return torch.cat([fn(*(t[s : s + size] for t in tensors)) for s in range(0, len(tensors[0]), size)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="validate")
    parser.add_argument("--judge", help="a trained judge: also score oracle-top and sampled images")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = load_run(args.run, "cpu")
    vqvae, prior = run.vqvae.eval(), run.require_prior()
    if getattr(vqvae, "num_levels", 1) != 2:
        raise SystemExit(f"{args.run}: not a two-level run (model.levels is 1)")
    dataset = load_split(args.data, args.split, in_memory=False)
    wanted = slice_conditions(args.n, prior, None)
    if wanted is None:
        wanted = torch.linspace(0, int(dataset.slice_indices().max()), args.n).round().long()
    chosen = pick_slices(dataset.slice_indices(), wanted, args.seed)
    images = torch.stack([dataset[int(i)]["image"] for i in chosen])  # (n, 1, H, W)
    with torch.no_grad():
        encoded = [vqvae.encode(images[s : s + 32]) for s in range(0, len(images), 32)]
        bottom = torch.cat([codes.bottom for codes in encoded])  # (n, h, w)
        top = torch.cat([codes.top for codes in encoded])  # (n, h/t, w/t)
        recon = in_batches(lambda b, t: decode_levels(vqvae, b, t), bottom, top)
        swapped = in_batches(lambda b, t: decode_levels(vqvae, b, t), bottom, top.roll(1, 0))
        top_only = in_batches(vqvae.decode_top, top)
    result: dict[str, Any] = {
        "run": args.run,
        "n": args.n,
        "bottom_dropout": run.config.model.bottom_dropout,
        "bottom_corruption": run.config.model.bottom_corruption,
        "recon_ssim": float(ssim_per_image(recon, images).mean()),
        "top_swap_ssim": float(ssim_per_image(swapped, recon).mean()),
        "top_only_ssim": float(ssim_per_image(top_only, images).mean()),
    }
    if args.judge:
        result.update(judge_scores(args, run, top, wanted))
    print(json.dumps(result, indent=2))


def judge_scores(
    args: argparse.Namespace, run: Any, real_top: torch.Tensor, wanted: torch.Tensor
) -> dict[str, Any]:
    from brainvq.evaluation.judge import load_judge

    judge = load_judge(args.judge, "cpu")
    reference = build_reference(judge, args.data, args.split, args.data, Path(args.judge) / "cache")[0]
    prior, top_prior, vqvae = run.require_prior(), run.require_top_prior(), run.vqvae.eval()
    condition = wanted if prior.config.condition_on_slice else None
    top_condition = wanted if top_prior.config.condition_on_slice else None
    scores = {}
    for name in ("oracle_top", "sampled"):
        started = time.perf_counter()
        top = (
            real_top
            if name == "oracle_top"
            else sample_codes(top_prior, args.n, run.top_code_shape, condition=top_condition, generator=args.seed)
        )
        bottom = sample_codes(prior, args.n, run.code_shape, condition=condition, context=top, generator=args.seed)
        with torch.no_grad():
            images = in_batches(lambda b, t: decode_levels(vqvae, b, t), bottom, top)
        scored = score_set(judge, ImageSet(name, to_uint8(images), wanted), reference)
        scores[name] = {k: v for k, v in scored.items() if not k.startswith("_")}
        scores[name]["seconds"] = time.perf_counter() - started
    return scores


if __name__ == "__main__":
    main()
