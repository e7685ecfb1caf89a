"""Anomaly maps that need no resampling, scored like `brainvq anomaly` scores its two methods.

    python benchmarks/anomaly_variants.py --run runs/oasis-cpu --data runs/lesions --split validate

One prior pass per slice gives the likelihood map; this script scores, on the same lesions, brain
pixels and metrics (pixel AP/AUROC, best Dice, image AUROC/AP) as `brainvq anomaly`:

* ``nll``: the per-code NLL (bits) upsampled to pixels and smoothed (σ 1.5 px), the plain
  likelihood map of `brainvq score`;
* ``nll_x_residual``: that map times the VQ-VAE residual map (high where a code is unlikely *and*
  the reconstruction differs).

It prints one JSON object; compare with the `prior` and `residual` entries of `brainvq anomaly --json`.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from brainvq.anomaly.detection import _slices_or_none
from brainvq.anomaly.inputs import open_inputs
from brainvq.anomaly.likelihood import code_nll_bits, encode
from brainvq.anomaly.maps import gaussian_blur
from brainvq.anomaly.scoring import PixelScores
from brainvq.data.dataset import iterate_batches
from brainvq.evaluation.metrics import foreground_mask
from brainvq.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="validate")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    run = load_run(args.run, "auto")
    inputs = open_inputs(args.data, args.split, None, None)
    if inputs.truth is None:
        raise SystemExit(f"{args.data}: no lesion masks for split {args.split} (make them with `brainvq lesions`)")
    scores = {"nll": PixelScores.empty(), "nll_x_residual": PixelScores.empty()}
    with torch.no_grad():
        for batch in iterate_batches(inputs.dataset, args.batch_size):
            index = batch["index"].tolist()
            images = batch["image"]
            encoded = encode(run, images)
            nll = code_nll_bits(run, encoded.codes, _slices_or_none(inputs, index), encoded.top)
            scale = images.shape[-1] // nll.shape[-1]
            nll_map = gaussian_blur(nll.repeat_interleave(scale, 1).repeat_interleave(scale, 2))  # (B, H, W)
            residual = gaussian_blur((images[:, 0] - encoded.recon[:, 0]).abs())
            brain = (batch["mask"] > 0) if "mask" in batch else foreground_mask(images)[:, 0]
            truth = torch.stack(
                [torch.from_numpy(np.asarray(Image.open(inputs.truth[i]).convert("L")) > 0) for i in index]
            )
            scores["nll"].update(nll_map, truth, brain)
            scores["nll_x_residual"].update(nll_map * residual, truth, brain)
    result = {"images": len(inputs.names), "run": args.run, "prior_hash": run.prior_hash}
    result.update({name: accumulated.summary() for name, accumulated in scores.items()})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
