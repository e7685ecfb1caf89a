"""Quality at a fixed CPU budget: validate SSIM and codes used after N minutes of VQ-VAE training on
real OASIS, brainvq's default quantiser against the plain seed-style one (codebook loss, uniform
init, no restarts, fp32), run one after the other in this process.

    python benchmarks/quality.py --data ../shared/oasis --minutes 5 --out runs/quality
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from brainvq.config import Config, apply_overrides
from brainvq.evaluation.reconstruction import evaluate_run
from brainvq.training.stages import train_vqvae

VARIANTS = {
    "default (EMA + k-means++ init + dead-code restart, bf16 auto)": [],
    "seed-style (codebook loss, uniform init, no restart, fp32)": [
        "model.quantizer=loss",
        "model.codebook_init=uniform",
        "model.dead_code_steps=0",
        "fabric.precision=32-true",
        "fabric.channels_last=false",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    args = parser.parse_args()
    rows = []
    for index, (name, overrides) in enumerate(VARIANTS.items()):
        config = apply_overrides(
            Config(),
            [
                f"data.root={args.data}",
                f"train.max_minutes={args.minutes}",
                "data.val_limit_images=128",
                "model.levels=1",  # the variants are one-level quantiser/loss choices (README, "Why the default quantiser")
                *overrides,
            ],
        )
        run = args.out / f"variant{index}"
        summary = train_vqvae(config, run, force=True, progress=False)
        result = evaluate_run(run, args.data, "validate", device="cpu")
        rows.append(
            {
                "variant": name,
                "steps": summary["steps"],
                "ssim": result["ssim"],
                "psnr": result["psnr"],
                "codes_used": result["codes_used"],
                "perplexity": result["perplexity"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\n| variant | steps in {args.minutes:g} min | validate SSIM | PSNR (dB) | codes used (of 512) | perplexity |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['steps']} | {row['ssim']:.4f} | {row['psnr']:.2f} | {row['codes_used']} | "
            f"{row['perplexity']:.1f} |"
        )


if __name__ == "__main__":
    main()
