"""Sampling speed: naive vs fast sampler on this machine, measured in one process.

    python benchmarks/sampling.py                 # default prior config, 64x64 maps, batch 16
                                                  # (and the two-level preset's top transformer, 16x16)
    python benchmarks/sampling.py --full-naive    # time every naive step too (about 25 min on 2 CPU cores)
    python benchmarks/sampling.py --two-level-only   # only the last part below (about a minute)

It then times the two-level preset's draw of 16 slices (top transformer with its key/value cache,
bottom PixelCNN conditioned on the top map, the VQ-VAE-2 decoder) and the fast sampler's row cache
stored channels-last (the default) against the same cache stored contiguously (as before).

The naive sampler's steps all cost the same (one full forward pass over the map), so by default it
is timed over --naive-steps positions and scaled to the whole map; the fast sampler is timed over
the whole map. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from brainvq.config import Config, ModelConfig, PriorConfig
from brainvq.models import VQVAE, Codes, build_prior, build_vqvae
from brainvq.models.pixelcnn import StagedPrior
from brainvq.sampling import RowCache, draw, sample_codes


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
    codes = Codes(torch.randint(0, 512, (batch, size, size)))
    vqvae.decode(codes)
    started = time.perf_counter()
    vqvae.decode(codes)
    return time.perf_counter() - started


class ContiguousRowCache(RowCache):
    """The row cache as it was stored before: contiguous (B, C, h, w), one run of memory per channel."""

    memory_format = torch.contiguous_format


def row_cache_seconds(
    cache_type: type[RowCache],
    prior: StagedPrior,
    codes: torch.Tensor,
    condition: torch.Tensor,
    top: torch.Tensor,
) -> float:
    """Seconds for the fast sampler's loop over every position of ``codes`` (B, h, w), drawn at top-p 0.7."""
    generator = torch.Generator().manual_seed(0)
    codes = codes.clone()
    started = time.perf_counter()
    with torch.no_grad():
        cache = cache_type(prior, codes, condition, top)
        for i in range(codes.shape[1]):
            for j in range(codes.shape[2]):
                codes[:, i, j] = draw(cache.logits(i, j), 1.0, generator, top_p=0.7)
            cache.finish_row(i)
    return time.perf_counter() - started


def two_level_preset(batch: int, rows: int) -> None:
    """The default (oasis-cpu) two-level draw, with random weights, and the row cache's layouts."""
    config = Config()
    vqvae = build_vqvae(config.model).eval()
    bottom_config = dataclasses.replace(
        config.prior, code_height=64, code_width=64, context_num_embeddings=512, context_factor=4
    )
    bottom = build_prior(bottom_config, 512).eval()
    assert isinstance(bottom, StagedPrior)
    top_prior = build_prior(dataclasses.replace(config.top_prior, code_height=16, code_width=16), 512).eval()
    condition = torch.linspace(4, 27, batch).round().long()
    started = time.perf_counter()
    top = sample_codes(top_prior, batch, (16, 16), generator=0, condition=condition, batch_size=batch)
    top_done = time.perf_counter()
    codes = sample_codes(bottom, batch, (64, 64), generator=0, condition=condition, context=top, top_p=0.7)
    bottom_done = time.perf_counter()
    with torch.no_grad():
        vqvae.decode(Codes(bottom=codes, top=top))
    decoded = time.perf_counter()
    top_seconds, bottom_seconds, decode_seconds = top_done - started, bottom_done - top_done, decoded - bottom_done
    total = decoded - started
    print(
        f"two-level preset, {batch} slices: top map {top_seconds:.1f} s + bottom map {bottom_seconds:.1f} s "
        f"+ decoding {decode_seconds:.1f} s = {total:.1f} s (random weights: every nucleus is wide)"
    )
    print(f"row cache layout, bottom prior, first {rows} rows of 64, alternated twice:")
    first = torch.zeros(batch, rows, 64, dtype=torch.long)
    timings: dict[str, list[float]] = {"contiguous (before)": [], "channels-last (now)": []}
    for _ in range(2):
        for name, cache_type in zip(timings, (ContiguousRowCache, RowCache), strict=True):
            timings[name].append(row_cache_seconds(cache_type, bottom, first, condition, top))
    for name, seconds in timings.items():
        print(f"  {name:22s} {min(seconds) * 64 / rows:6.1f} s per map (best of 2, scaled from {rows} rows)")
    before, now = (min(seconds) for seconds in timings.values())
    print(f"  speed-up: {before / now:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--naive-steps", type=int, default=24)
    parser.add_argument("--full-naive", action="store_true")
    parser.add_argument("--layout-rows", type=int, default=8, help="rows of the bottom map timed per layout")
    parser.add_argument(
        "--two-level-only", action="store_true", help="only the two-level preset's draw and layouts"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, maps {args.size}x{args.size}, "
        f"batch {args.batch}, 512 codes\n"
    )
    if args.two_level_only:
        two_level_preset(args.batch, args.layout_rows)
        return
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
    print()
    two_level_preset(args.batch, args.layout_rows)


if __name__ == "__main__":
    main()
