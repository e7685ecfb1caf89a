"""``precision: auto`` on a CPU, chosen by measurement: bf16 autocast only where it is faster here.

A CPU that reports native bf16 (``avx512_bf16``, AMX) is not always faster in bf16: on a 2-core Xeon
with ``avx512_bf16`` and no AMX, a conv block's forward and backward took 0.22 s under bf16 autocast
against 0.13-0.16 s in fp32. So the first time ``auto`` resolves on a CPU with the flag, a short probe
times a few forward+backward passes of a VQ-VAE-sized conv block in both precisions and picks bf16
only when it is at least :data:`MARGIN` faster. The answer is cached per machine (CPU model, flags,
thread count, torch version) in ``$BRAINVQ_CACHE`` (default ``~/.cache/brainvq``), so the probe runs
once; ``brainvq devices`` prints the choice and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

MARGIN = 0.9  # bf16 must take at most 90 % of fp32's time to be chosen
REPEATS = 3


class PrecisionChoice(NamedTuple):
    """What ``auto`` means on this CPU, and why."""

    precision: str  # "bf16-mixed" or "32-true"
    reason: str
    fp32_seconds: float | None = None  # one forward+backward of the probe block, when measured
    bf16_seconds: float | None = None


def cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_native_bf16(flags: str | None = None) -> bool:
    """True on x86 CPUs that report avx512_bf16 or AMX."""
    text = cpu_flags() if flags is None else flags
    return "avx512_bf16" in text or "amx_bf16" in text


def cache_folder() -> Path:
    return Path(os.environ.get("BRAINVQ_CACHE") or Path.home() / ".cache" / "brainvq")


def machine_key() -> str:
    """Changes with the CPU model and flags, the thread count and the torch version."""
    flags = cpu_flags()
    model = next((line for line in flags.splitlines() if line.startswith("model name")), platform.processor())
    flag_line = next((line for line in flags.splitlines() if line.startswith("flags")), "")
    text = "|".join([model, flag_line, str(torch.get_num_threads()), torch.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _probe_block() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(64, 128, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1),
    )  # fmt: skip


def time_block(dtype: torch.dtype | None, repeats: int = REPEATS) -> float:
    """Median seconds of one forward+backward pass of the probe block on 8 x 64 x 64 x 64 inputs
    (channels-last, as training runs), in fp32 (``dtype`` None) or under autocast to ``dtype``. The
    caller's random state and grad mode are left as they were."""
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        block = _probe_block().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = torch.randn(8, 64, 64, 64).contiguous(memory_format=torch.channels_last)
        times = []
        for _ in range(repeats + 1):  # the first pass warms up the kernels
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = block(x).float().square().mean()
            loss.backward()
            times.append(time.perf_counter() - started)
    return sorted(times[1:])[len(times[1:]) // 2]


def measure(rounds: int = REPEATS) -> PrecisionChoice:
    """Both precisions timed in alternation, ``rounds`` times each, and the medians compared: a burst
    of load from another process (a test run, a second training) then slows both alike instead of
    deciding the answer that is cached for good (a probe run once beside another job picked fp32 on a
    machine where bf16 is 1.6x faster)."""
    fp32_times, bf16_times = [], []
    for _ in range(rounds):
        fp32_times.append(time_block(None, repeats=1))
        bf16_times.append(time_block(torch.bfloat16, repeats=1))
    fp32, bf16 = sorted(fp32_times)[rounds // 2], sorted(bf16_times)[rounds // 2]
    faster = bf16 <= MARGIN * fp32
    verdict = "faster" if faster else "not faster enough"
    reason = f"measured: bf16 {bf16 * 1000:.0f} ms against fp32 {fp32 * 1000:.0f} ms a pass ({verdict})"
    return PrecisionChoice("bf16-mixed" if faster else "32-true", reason, fp32, bf16)


def cpu_precision() -> PrecisionChoice:
    """What ``precision: auto`` means on this CPU: fp32 without native bf16, else the cached or freshly
    measured faster of the two."""
    if not cpu_has_native_bf16():
        return PrecisionChoice("32-true", "no native bf16 on this CPU (avx512_bf16/AMX)")
    path = cache_folder() / f"precision_{machine_key()}.json"
    try:
        saved = json.loads(path.read_text())
        return PrecisionChoice(saved["precision"], f"{saved['reason']} (cached in {path})", saved["fp32_seconds"],
                               saved["bf16_seconds"])  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        pass
    choice = measure()
    try:
        from brainvq.files import atomic_write_json

        atomic_write_json(path, choice._asdict())
    except OSError:  # a read-only home: measure again next time
        pass
    return choice
