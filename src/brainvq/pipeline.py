"""Stage orchestration: encode, evaluate and sample a run, and the whole ``pipeline`` and ``demo``.

``pipeline`` runs train-vqvae -> encode -> train-prior -> evaluate (validate, and test when present)
-> sample -> figures -> report, recording finished stages in ``RUN/pipeline.json`` so that a
second call skips them and an interrupted stage resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from brainvq.codes import CodeMaps, check_image_size, encode_dataset
from brainvq.config import Config
from brainvq.data import available_splits, is_oasis_root, load_split
from brainvq.errors import RunError
from brainvq.figures import all_training_figures, image_grid, reconstruction_grid
from brainvq.metrics import evaluate_prior, evaluate_reconstructions
from brainvq.runs import LoadedRun, RunDir, atomic_save_image, atomic_write_json, load_run
from brainvq.sample import sample
from brainvq.train import autocast_dtype, resolve_accelerator, train_prior, train_vqvae


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    return torch.device(resolve_accelerator(device))


def encode_run(
    run_root: str | Path,
    data_root: str | Path,
    splits: Sequence[str],
    *,
    batch_size: int = 64,
    device: str = "auto",
) -> dict[str, Any]:
    """Encode ``splits`` of ``data_root`` with the run's VQ-VAE into ``RUN/codes/{split}.pt``."""
    device_ = resolve_device(device)
    loaded = load_run(run_root, device_)
    result: dict[str, Any] = {}
    for split in splits:
        dataset = load_split(data_root, split)
        check_image_size(loaded.vqvae, dataset.image_size, loaded.image_size)
        started = time.perf_counter()
        codes = encode_dataset(
            loaded.vqvae,
            dataset,
            split,
            batch_size=batch_size,
            device=device_,
            autocast_dtype=autocast_dtype(loaded.config.fabric.precision),
        )
        codes.save(loaded.root.code_file(split))
        result[split] = {
            "maps": len(codes),
            "shape": list(codes.indices.shape[1:]),
            "path": str(loaded.root.code_file(split)),
            "seconds": time.perf_counter() - started,
        }
    return result


def evaluate_run(
    run_root: str | Path,
    data_root: str | Path,
    split: str,
    *,
    batch_size: int = 32,
    device: str = "auto",
    precision: str | None = None,
) -> dict[str, Any]:
    """Reconstruction metrics (and prior metrics when a prior exists) on one split; writes
    ``RUN/metrics/evaluate_{split}.json`` and ``RUN/figures/reconstructions_{split}.png``."""
    device_ = resolve_device(device)
    loaded = load_run(run_root, device_)
    precision = precision or loaded.config.fabric.precision
    dataset = load_split(data_root, split)
    check_image_size(loaded.vqvae, dataset.image_size, loaded.image_size)
    started = time.perf_counter()
    dtype = autocast_dtype(precision)
    summary = evaluate_reconstructions(loaded.vqvae, dataset, batch_size, dtype)
    result: dict[str, Any] = {"split": split, "images": summary["images"]}
    for key in ("ssim", "ssim_seed", "psnr", "ms_ssim", "codes_used", "perplexity"):
        result[key] = summary.get(key)
    result["ssim_seed_note"] = "tf.image.ssim(max_val=3) on [0,1] images, as in the seed report; not standard SSIM"
    if loaded.prior is not None:
        codes = _codes_for(loaded, dataset, split, device_)
        prior_metrics = evaluate_prior(
            loaded.prior, codes, batch_size, loaded.config.prior.condition_on_slice, dtype
        )
        result.update(prior_metrics)
    result["per_subject_ssim"] = summary.get("per_subject_ssim")
    result["precision"], result["device"] = precision, str(device_)
    result["seconds"] = time.perf_counter() - started
    atomic_write_json(loaded.root.metrics / f"evaluate_{split}.json", result)
    _reconstruction_figure(loaded, dataset, split, device_)
    all_training_figures(loaded.root)
    return result


def _codes_for(loaded: LoadedRun, dataset: Any, split: str, device: torch.device) -> CodeMaps:
    path = loaded.root.code_file(split)
    if path.is_file():
        codes = CodeMaps.load(path)
        if len(codes) == len(dataset):
            return codes
    codes = encode_dataset(
        loaded.vqvae, dataset, split, device=device, autocast_dtype=autocast_dtype(loaded.config.fabric.precision)
    )
    codes.save(path)
    return codes


@torch.no_grad()
def _reconstruction_figure(loaded: LoadedRun, dataset: Any, split: str, device: torch.device) -> Path:
    from brainvq.train import snapshot_indices

    picks = snapshot_indices(dataset)[:6]
    images = dataset.images(picks).to(device)
    recon = loaded.vqvae.decode(loaded.vqvae.encode(images)).float().cpu()
    return reconstruction_grid(
        images.cpu(),
        recon,
        loaded.root.figures / f"reconstructions_{split}.png",
        title=f"{split}: original / reconstruction / error",
    )


def sample_run(
    run_root: str | Path,
    n: int = 16,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    slice_index: int | None = None,
    batch_size: int = 16,
    sampler: str = "fast",
    out: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Generate ``n`` slices; write them as PNGs plus ``grid.png`` under ``out`` (default RUN/samples)."""
    device_ = resolve_device(device)
    loaded = load_run(run_root, device_)
    result = sample(
        loaded,
        n,
        seed=seed,
        temperature=temperature,
        slice_index=slice_index,
        batch_size=batch_size,
        sampler=sampler,
        device=device_,
        progress=progress,
    )
    out_dir = Path(out) if out is not None else loaded.root.samples
    paths = []
    for index, image in enumerate(result.images):
        path = out_dir / f"sample_{index:03d}.png"
        atomic_save_image(path, Image.fromarray((image[0].clamp(0, 1) * 255 + 0.5).byte().numpy(), mode="L"))
        paths.append(str(path))
    titles = [f"slice {s}" for s in result.slices] if result.slices is not None else None
    grid = image_grid(
        result.images,
        out_dir / "grid.png",
        titles=titles,
        title=f"{n} samples (seed {seed}, T={temperature}, {sampler} sampler)",
    )
    summary = {
        "n": n,
        "seconds": result.seconds,
        "sampling_seconds": result.sampling_seconds,
        "decoding_seconds": result.decoding_seconds,
        "seconds_per_image": result.seconds / n,
        "sampler": sampler,
        "seed": seed,
        "temperature": temperature,
        "batch_size": batch_size,
        "slices": result.slices,
        "device": str(device_),
        "code_shape": list(loaded.code_shape),
        "grid": str(grid),
        "images": paths,
    }
    atomic_write_json(loaded.root.metrics / "sampling.json", summary)
    return summary


# ----------------------------------------------------------------------------- the whole pipeline
def _completed(run: RunDir) -> list[str]:
    path = run.root / "pipeline.json"
    return list(json.loads(path.read_text()).get("completed", [])) if path.is_file() else []


def _mark(run: RunDir, stage: str) -> None:
    done = _completed(run)
    if stage not in done:
        done.append(stage)
    atomic_write_json(run.root / "pipeline.json", {"completed": done})


def run_pipeline(
    config: Config,
    run_root: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    samples: int = 16,
    device: str = "auto",
    log: Any = print,
) -> dict[str, Any]:
    """Every stage of a run, skipping finished ones and resuming an interrupted one."""
    run = RunDir(run_root)
    if config.data.root is None:
        raise RunError("pipeline needs --data")
    if force and run.root.exists():
        import shutil

        shutil.rmtree(run.root)
    run.root.mkdir(parents=True, exist_ok=True)
    data_root = config.data.root
    splits = available_splits(Path(data_root)) if is_oasis_root(Path(data_root)) else [config.data.train_split]
    eval_splits = [s for s in (config.data.val_split, "test") if s and s in splits]
    summary: dict[str, Any] = {"run": str(run.root)}
    started = time.perf_counter()

    def stage(name: str, action: Any) -> None:
        if name in _completed(run):
            log(f"[pipeline] {name}: already complete, skipped")
            return
        log(f"[pipeline] {name} ...")
        t0 = time.perf_counter()
        summary[name] = action()
        summary[name + "_seconds"] = time.perf_counter() - t0
        _mark(run, name)

    stage("train-vqvae", lambda: train_vqvae(config, run.root, resume=run.has_stage("vqvae"), progress=progress))
    encode_splits = [s for s in (config.data.train_split, *eval_splits) if s in splits]
    stage("encode", lambda: encode_run(run.root, data_root, encode_splits, device=device))
    stage("train-prior", lambda: train_prior(config, run.root, resume=run.has_stage("prior"), progress=progress))
    for split in eval_splits:
        stage(f"evaluate-{split}", lambda split=split: evaluate_run(run.root, data_root, split, device=device))
    stage(
        "sample",
        lambda: sample_run(
            run.root,
            samples,
            seed=config.sample.seed,
            temperature=config.sample.temperature,
            batch_size=config.sample.batch_size,
            sampler=config.sample.sampler,
            device=device,
            progress=progress,
        ),
    )
    stage("figures", lambda: [str(p) for p in all_training_figures(run)])
    from brainvq.report import write_report

    summary["report"] = str(write_report(run.root))
    _mark(run, "report")
    summary["seconds"] = time.perf_counter() - started
    return summary


def headline(run_root: str | Path) -> dict[str, Any]:
    """The numbers a user wants first: SSIM, PSNR, codes used, prior NLL/accuracy, sampling time."""
    run = RunDir(run_root)
    result: dict[str, Any] = {}
    for split in ("validate", "test"):
        path = run.metrics / f"evaluate_{split}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            result[split] = {
                k: data.get(k)
                for k in ("images", "ssim", "psnr", "ms_ssim", "codes_used", "prior_nll_bits", "prior_accuracy")
            }
    path = run.metrics / "sampling.json"
    if path.is_file():
        data = json.loads(path.read_text())
        result["sampling"] = {k: data[k] for k in ("n", "seconds", "sampler", "device")}
    return result
