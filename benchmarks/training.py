"""Training throughput of the VQ-VAE: brainvq's Fabric loop against a bare PyTorch loop of the same
model, and fp32 against bf16-mixed (+ channels_last) on this CPU, all in one process.

    python benchmarks/training.py [--steps 30] [--batch 16] [--data DIR]

Images per second exclude the first --warmup steps (codebook initialisation, allocator warm-up).
Peak memory is the process's peak resident set size after each variant (it only grows, so read
each line as 'peak so far'); run one variant with --only NAME for its own peak.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from brainvq.config import Config, apply_overrides
from brainvq.data.dataset import load_split
from brainvq.data.phantom import make_phantom
from brainvq.models import VQVAE
from brainvq.runs import RunDir
from brainvq.training.engine import Engine
from brainvq.training.launch import make_fabric
from brainvq.training.schedule import EpochBatches
from brainvq.training.task import StepOutput
from brainvq.training.tasks import VQVAETask


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_loop(dataset: Any, batch: int, steps: int, warmup: int, bf16: bool, channels_last: bool) -> float:
    """A plain PyTorch loop: same model, optimiser, batches and loss as brainvq's one-level VQ-VAE."""
    torch.manual_seed(0)
    model = VQVAE(replace(Config().model, levels=1))
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    batches = EpochBatches(len(dataset), batch, seed=0)
    order = [b for epoch in range(100) for b in batches.epoch(epoch)]
    for step, indices in enumerate(order[: warmup + steps]):
        if step == warmup:
            started = time.perf_counter()
        images = dataset.images(indices).contiguous(memory_format=memory)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = model(images)
            loss = F.mse_loss(output.decoded.float(), images) + output.vq_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


class TimedTask(VQVAETask):
    """The real VQ-VAE task, recording when each step finished."""

    times: list[float]

    def on_step(self, output: StepOutput) -> None:
        super().on_step(output)
        self.times.append(time.perf_counter())


def brainvq_loop(dataset: Any, batch: int, steps: int, warmup: int, precision: str) -> float:
    config = apply_overrides(
        Config(),
        [
            "model.levels=1",  # the bare loop's loss has no top-only reconstructions
            f"train.batch_size={batch}",
            f"train.max_steps={warmup + steps}",
            "train.checkpoint_every_steps=100000",
            f"fabric.precision={precision}",
            "fabric.accelerator=cpu",
        ],
    )
    task = TimedTask(config, config.train, dataset, None)
    task.times = []
    with tempfile.TemporaryDirectory() as folder:
        run = RunDir(folder)
        run.prepare_stage("vqvae", resume=False, force=False)
        Engine(task, make_fabric(config.fabric), run, resume=False, progress=False).fit()
    return steps * batch / (task.times[-1] - task.times[warmup - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--data", type=Path, help="OASIS-layout root (default: a phantom made in a temp folder)")
    parser.add_argument("--only", help="run one variant by name")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = args.data or Path(folder)
        if args.data is None:
            make_phantom(root, num_subjects=8, seed=0, size=256)
        dataset = load_split(root, "train", limit_images=(args.warmup + args.steps) * args.batch)
        variants = {
            "bare fp32": lambda: bare_loop(dataset, args.batch, args.steps, args.warmup, False, False),
            "bare fp32 + channels_last": lambda: bare_loop(
                dataset, args.batch, args.steps, args.warmup, False, True
            ),
            "bare bf16 + channels_last": lambda: bare_loop(
                dataset, args.batch, args.steps, args.warmup, True, True
            ),
            "brainvq fp32 (32-true)": lambda: brainvq_loop(
                dataset, args.batch, args.steps, args.warmup, "32-true"
            ),
            "brainvq default (auto)": lambda: brainvq_loop(dataset, args.batch, args.steps, args.warmup, "auto"),
        }
        if args.only:
            variants = {args.only: variants[args.only]}
        print(
            f"VQ-VAE (seed shape, 256x256), batch {args.batch}, {args.steps} timed steps, "
            f"{torch.get_num_threads()} threads\n"
        )
        results: dict[str, float] = {}
        for name, run in variants.items():
            results[name] = run()
            print(f"{name:28s} {results[name]:7.1f} img/s   peak RSS so far {peak_mb():7.0f} MB", flush=True)
        if len(results) == len(variants):
            ratio = results["bare bf16 + channels_last"] / results["bare fp32"]
            print(f"\nbf16 + channels_last vs plain fp32 (bare loops):        {ratio:.2f}x")
            ratio = results["brainvq fp32 (32-true)"] / results["bare fp32 + channels_last"]
            print(f"brainvq 32-true loop vs bare fp32 + channels_last loop: {ratio:.2f}x")
            ratio = results["brainvq default (auto)"] / results["bare bf16 + channels_last"]
            print(f"brainvq default loop vs bare bf16 + channels_last loop: {ratio:.2f}x")


if __name__ == "__main__":
    main()
