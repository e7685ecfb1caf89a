"""Device and precision policy, shared by training, evaluation, encoding and sampling.

``auto`` accelerators become CUDA when a GPU is visible, else the CPU (``gpu`` is accepted as
Lightning's alias of ``cuda``). ``auto`` precision becomes bf16 autocast on GPUs that support it
(fp16 otherwise); on a CPU, bf16 autocast only where a short probe measured it faster than fp32
(:mod:`brainvq.precision_probe`), else full fp32.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from brainvq.errors import ConfigError

ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def resolve_accelerator(accelerator: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``gpu`` -> ``cuda``; a missing GPU is a ConfigError."""
    if accelerator == "gpu":
        accelerator = "cuda"
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ConfigError("fabric.accelerator is cuda/gpu but no CUDA device is visible (use auto or cpu)")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("fabric.accelerator is mps but no MPS device is available (use auto or cpu)")
    return accelerator


def resolve_precision(precision: str, accelerator: str) -> str:
    """Turn ``auto`` into a Fabric precision for the (resolved) accelerator that will run."""
    if precision != "auto":
        return precision
    if accelerator in ("cuda", "gpu"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator == "cpu":
        from brainvq.precision_probe import cpu_precision

        return cpu_precision().precision  # bf16 only where a probe measured it faster here
    return "32-true"


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from ``auto``/``cpu``/``cuda``/``cuda:1``/``gpu``."""
    if isinstance(device, torch.device):
        return device
    if device in ACCELERATORS:
        return torch.device(resolve_accelerator(device))
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} asked for, but no CUDA device is visible")
    return resolved


def inference_precision(device: torch.device, requested: str | None = None) -> str:
    """The precision evaluation, encoding and sampling use on ``device``: ``requested`` when given,
    else what fits that device (bf16 autocast on bf16 GPUs and CPUs, fp16 on older GPUs, else fp32),
    whatever precision the run was trained at."""
    return resolve_precision(requested or "auto", device.type)


def is_main_process() -> bool:
    """False only on the non-first processes of a distributed launch: torchrun and SLURM set
    ``RANK``/``SLURM_PROCID``; Fabric's own ``ddp`` launcher re-runs the command with
    ``LOCAL_RANK``/``NODE_RANK``. Used to keep one-process work (files, reports, printing) on rank 0."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name]) == 0
    return os.environ.get("LOCAL_RANK", "0") in ("", "0") and os.environ.get("NODE_RANK", "0") in ("", "0")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Fabric precision string (None for full precision)."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` to ``dtype`` on ``device``, or a disabled context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def barrier() -> None:
    """Wait for every rank when running as a distributed group (a no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def end_process_group() -> None:
    """Leave the distributed group cleanly at the end of a command: wait for every rank, then destroy
    the group. Without this, a rank whose peer already exited can abort at interpreter shutdown
    (gloo: "terminate called without an active exception").

    Call it once the DDP-wrapped model is gone, and outside any ``except`` block whose traceback
    still holds it. DDP's reducer keeps the group alive and frees it without releasing the GIL;
    freed after the group is destroyed, its destructor joins gloo's worker threads while one of
    them waits for the GIL to free the tensors of a finished collective: a silent hang (seen in
    CI, reproduced about once in ten runs of tests/training/test_train.py's DDP tests). The
    collection below frees reducers that only a reference cycle still held.
    """
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def limit_heap_growth() -> None:
    """Keep a long streaming pass (encode, evaluate) from growing the heap batch after batch.

    glibc raises its mmap threshold each time a large block is freed, so batch-sized activations
    (tens of MB) end up on the heap, where fragmentation keeps hundreds of MB resident after they
    are freed (measured: encoding the 9,664 OASIS train slices peaked at 1,025 MB with the dynamic
    threshold, 616 MB with it fixed at 128 KiB). A no-op where glibc's ``mallopt`` is absent.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, which also stops its dynamic growth
    except (OSError, AttributeError):
        return
