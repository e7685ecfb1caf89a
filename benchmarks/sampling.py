"""Sampling speed: naive vs fast sampler on this machine, measured in one process.

    python benchmarks/sampling.py                 # default prior config, 64x64 maps, batch 16
                                                  # (and the two-level preset's top transformer, 16x16)
    python benchmarks/sampling.py --full-naive    # time every naive step too (about 25 min on 2 CPU cores)

The naive sampler's steps all cost the same (one full forward pass over the map), so by default it
is timed over --naive-steps positions and scaled to the whole map; the fast sampler is timed over
the whole map. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import torch

from brainvq.config import ModelConfig, PriorConfig
from brainvq.models import VQVAE, build_prior
from brainvq.sample import draw, sample_codes


def naive_seconds_per_map(
    prior: torch.nn.Module, batch: int, size: int, steps: int | None, condition: torch.Tensor | None
) -> tuple[float, str]:
    codes = torch.zeros(batch, size, size, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    total = size * size
    timed = total if steps is None else min(steps, total)
    with torch.no_grad():
        prior(codes, condition)  # warm-up
        started = time.perf_counter()
        for position in range(timed):
            i, j = divmod(position, size)
            codes[:, i, j] = draw(prior(codes, condition)[:, :, i, j], 1.0, generator)
        elapsed = time.perf_counter() - started
    how = "measured" if timed == total else f"{timed} steps timed, x{total / timed:.0f}"
    return elapsed * total / timed, how


def fast_seconds(prior: torch.nn.Module, batch: int, size: int, condition: torch.Tensor | None = None) -> float:
    sample_codes(prior, batch, (8, 8), generator=0, batch_size=batch, condition=condition)  # warm-up
    started = time.perf_counter()
    sample_codes(prior, batch, (size, size), generator=0, batch_size=batch, condition=condition)
    return time.perf_counter() - started


def decode_seconds(batch: int, size: int) -> float:
    vqvae = VQVAE(ModelConfig()).eval()
    codes = torch.randint(0, 512, (batch, size, size))
    vqvae.decode(codes)
    started = time.perf_counter()
    vqvae.decode(codes)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--naive-steps", type=int, default=24)
    parser.add_argument("--full-naive", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, maps {args.size}x{args.size}, "
        f"batch {args.batch}, 512 codes\n"
    )
    print(f"{'prior':38s} {'naive s/batch':>14s} {'fast s/batch':>13s} {'speed-up':>9s}  naive timing")
    configs = {
        "seed PixelCNN (default: 128 ch, 2 blocks)": PriorConfig(),
        "oasis-cpu-1level prior (8 blocks, pos., slice)": PriorConfig(
            num_layers=8, condition_on_slice=True, positional=True, code_height=args.size, code_width=args.size
        ),
        "gated PixelCNN (64 ch, 8 layers)": PriorConfig(
            arch="gated", embedding_dim=32, hidden_channels=64, num_layers=8
        ),
    }
    for name, config in configs.items():
        prior = build_prior(config, 512).eval()
        condition = torch.full((args.batch,), 16) if config.condition_on_slice else None
        steps = None if args.full_naive else args.naive_steps
        naive, how = naive_seconds_per_map(prior, args.batch, args.size, steps, condition)
        fast = fast_seconds(prior, args.batch, args.size, condition)
        print(f"{name:38s} {naive:14.1f} {fast:13.2f} {naive / fast:8.0f}x  {how}", flush=True)
    # the top prior of oasis-cpu (two levels): a transformer over a 16x16 map, KV cache vs a full pass per code
    top = PriorConfig(
        arch="transformer", hidden_channels=192, num_layers=4, num_heads=6, condition_on_slice=True,
        code_height=16, code_width=16,
    )  # fmt: skip
    prior = build_prior(top, 512).eval()
    condition = torch.full((args.batch,), 16)
    naive, how = naive_seconds_per_map(prior, args.batch, 16, None if args.full_naive else 64, condition)
    fast = fast_seconds(prior, args.batch, 16, condition)
    name = "top transformer 16x16 (KV cache)"
    print(f"{name:38s} {naive:14.1f} {fast:13.2f} {naive / fast:8.0f}x  {how}", flush=True)
    print()
    default = build_prior(PriorConfig(), 512).eval()
    for batch in (1, args.batch):
        sampling = fast_seconds(default, batch, args.size)
        decoding = decode_seconds(batch, args.size)
        print(
            f"default prior, batch {batch:2d}: {sampling:6.2f} s sampling + {decoding:5.2f} s decoding "
            f"= {(sampling + decoding) / batch:6.2f} s per image ({sampling + decoding:.1f} s for {batch})"
        )


if __name__ == "__main__":
    main()
