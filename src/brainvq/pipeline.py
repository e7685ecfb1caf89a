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

from brainvq.codes import CodeMaps, check_image_size, decode_levels, encode_dataset, encode_levels
from brainvq.config import Config
from brainvq.data import (
    SliceDataset,
    available_splits,
    check_data_root,
    check_no_leak,
    is_oasis_root,
    load_split,
    scan_split,
)
from brainvq.devices import (
    autocast_dtype,
    barrier,
    inference_precision,
    is_main_process,
    limit_heap_growth,
    resolve_device,
)
from brainvq.errors import RunError
from brainvq.figures import all_training_figures, image_grid, reconstruction_grid
from brainvq.files import remove_owned
from brainvq.metrics import evaluate_prior, evaluate_reconstructions
from brainvq.realism import matching_slices
from brainvq.runs import (
    LoadedRun,
    RunDir,
    atomic_save_image,
    atomic_write_json,
    file_hash,
    load_checkpoint,
    load_run,
    stage_checkpoint,
)
from brainvq.sample import Sampling, describe_sampling, sample
from brainvq.train import PRIOR_STAGES, run_prior_levels, train_prior, train_vqvae


def _open_split(data_root: str | Path, split: str, *, masks: bool = False) -> SliceDataset:
    """A split that streams from disk (one batch of images in memory at a time), with masks when asked
    for and present."""
    with_masks = masks and scan_split(data_root, split).has_masks
    return load_split(data_root, split, in_memory=False, with_masks=with_masks)


def encode_run(
    run_root: str | Path,
    data_root: str | Path,
    splits: Sequence[str],
    *,
    batch_size: int = 64,
    device: str = "auto",
    precision: str | None = None,
) -> dict[str, Any]:
    """Encode ``splits`` of ``data_root`` with the run's VQ-VAE into ``RUN/codes/{split}.pt``; each file
    records the hash of the VQ-VAE checkpoint that made it."""
    limit_heap_growth()
    loaded = load_run(run_root, device)
    precision = inference_precision(loaded.device, precision)
    result: dict[str, Any] = {}
    for split in splits:
        dataset = _open_split(data_root, split)
        check_image_size(loaded.vqvae, dataset.image_size, loaded.image_size)
        started = time.perf_counter()
        codes = encode_dataset(
            loaded.vqvae,
            dataset,
            split,
            batch_size=batch_size,
            device=loaded.device,
            autocast_dtype=autocast_dtype(precision),
            vqvae_hash=loaded.vqvae_hash,
        )
        codes.save(loaded.root.code_file(split))
        result[split] = {
            "maps": len(codes),
            "shape": list(codes.indices.shape[1:]),
            "top_shape": list(codes.top_indices.shape[1:]) if codes.top_indices is not None else None,
            "path": str(loaded.root.code_file(split)),
            "seconds": time.perf_counter() - started,
            "precision": precision,
            "vqvae_hash": loaded.vqvae_hash,
        }
    return result


def evaluate_run(
    run_root: str | Path,
    data_root: str | Path,
    split: str,
    *,
    batch_size: int = 16,
    device: str = "auto",
    precision: str | None = None,
) -> dict[str, Any]:
    """Reconstruction metrics (and prior metrics when a prior exists) on one split; writes
    ``RUN/metrics/evaluate_{split}.json`` and ``RUN/figures/reconstructions_{split}.png``.

    Streams the split in batches; the prior is scored on the code maps of this same pass. Runs at
    the precision that fits the device it runs on (``precision`` overrides), stated in the result.
    """
    limit_heap_growth()
    loaded = load_run(run_root, device)
    precision = inference_precision(loaded.device, precision)
    dataset = _open_split(data_root, split, masks=True)
    check_image_size(loaded.vqvae, dataset.image_size, loaded.image_size)
    started = time.perf_counter()
    dtype = autocast_dtype(precision)
    summary = evaluate_reconstructions(
        loaded.vqvae,
        dataset,
        batch_size,
        dtype,
        keep_codes=loaded.prior is not None or loaded.top_prior is not None,
    )
    result: dict[str, Any] = {"split": split, "images": summary["images"]}
    for key in (
        "ssim", "ssim_seed", "psnr", "ms_ssim", "brain_ssim", "brain_psnr", "brain_images", "brain_region",
        "codes_used", "perplexity", "top_codes_used", "top_perplexity", "top_only_ssim",
    ):  # fmt: skip
        if key in summary or not key.startswith("top_"):
            result[key] = summary.get(key)
    result["ssim_seed_note"] = "tf.image.ssim(max_val=3) on [0,1] images, as in the seed report; not standard SSIM"
    result["psnr_note"] = "mean per-image PSNR, MSE floored at 8-bit quantisation noise (at most 58.9 dB)"
    two_levels = loaded.levels == 2
    if loaded.prior is not None or loaded.top_prior is not None:
        codes = CodeMaps(
            summary["codes"], dataset.subjects(), dataset.slice_indices(), split,
            loaded.config.model.num_embeddings, dataset.image_size, loaded.vqvae_hash,
            summary.get("top_codes"), loaded.config.model.top_num_embeddings if two_levels else None,
        )  # fmt: skip
        if loaded.prior is not None:  # the one prior, or the bottom prior given the true top maps
            prior_config = loaded.config.prior
            result.update(evaluate_prior(loaded.prior, codes, batch_size, prior_config.condition_on_slice, dtype))
        if loaded.top_prior is not None:
            top_config = loaded.config.top_prior
            top = evaluate_prior(
                loaded.top_prior, codes.level("top"), batch_size, top_config.condition_on_slice, dtype
            )
            result.update({f"top_{key}": value for key, value in top.items()})
    for problem in (loaded.prior_problem, loaded.top_prior_problem):
        if problem:
            result.setdefault("prior_problem", problem)
    result["per_subject_ssim"] = summary.get("per_subject_ssim")
    result["precision"], result["device"] = precision, str(loaded.device)
    result["vqvae_hash"], result["prior_hash"] = loaded.vqvae_hash, loaded.prior_hash
    if two_levels:
        result["levels"], result["top_prior_hash"] = 2, loaded.top_prior_hash
    result["seconds"] = time.perf_counter() - started
    if is_main_process():
        atomic_write_json(loaded.root.metrics / f"evaluate_{split}.json", result)
        _reconstruction_figure(loaded, dataset, split, loaded.device)
        all_training_figures(loaded.root)
    return result


@torch.no_grad()
def _reconstruction_figure(loaded: LoadedRun, dataset: Any, split: str, device: torch.device) -> Path:
    from brainvq.tasks import snapshot_indices

    picks = snapshot_indices(dataset)[:6]
    images = dataset.images(picks).to(device)
    recon = decode_levels(loaded.vqvae, *encode_levels(loaded.vqvae, images)).float().cpu()
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
    temperature: float | None = None,
    top_p: float | None = None,
    top_map_temperature: float | None = None,
    top_map_top_p: float | None = None,
    background_check: bool | None = None,
    slice_index: int | list[int] | None = None,
    batch_size: int = 16,
    sampler: str = "fast",
    out: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    record: bool = True,
) -> dict[str, Any]:
    """Generate ``n`` slices; write them as PNGs plus ``grid.png`` and ``samples.json`` (with the
    hashes of the checkpoints that made them) under ``out`` (default RUN/samples). ``temperature``,
    ``top_p`` and the top map's two and ``background_check`` (two levels) default to the run's
    ``sample`` config (:func:`brainvq.sample.resolve_sampling`). ``record`` also makes this the run's sampling
    record (``RUN/metrics/sampling.json``, which the report shows)."""
    device_ = resolve_device(device)
    loaded = load_run(run_root, device_)
    loaded.require_prior()
    result = sample(
        loaded,
        n,
        seed=seed,
        temperature=temperature,
        top_p=top_p,
        top_map_temperature=top_map_temperature,
        top_map_top_p=top_map_top_p,
        background_check=background_check,
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
        title=f"{n} samples (seed {seed}, {describe_sampling(result.sampling)}, {sampler} sampler)",
    )
    summary = {
        "n": n,
        "seconds": result.seconds,
        "sampling_seconds": result.sampling_seconds,
        "decoding_seconds": result.decoding_seconds,
        "seconds_per_image": result.seconds / n,
        "sampler": sampler,
        "seed": seed,
        "sampling_config": str(loaded.root.config) if loaded.root.config.is_file() else "checkpoints",
        **result.sampling._asdict(),  # temperature, top_p, top_map_temperature, top_map_top_p, background_check
        "redrawn_top_maps": result.redrawn_top_maps,
        "unresolved_top_maps": result.unresolved_top_maps,
        "batch_size": batch_size,
        "slices": result.slices,
        "device": str(device_),
        "code_shape": list(loaded.code_shape),
        "top_code_shape": list(loaded.top_code_shape) if loaded.levels == 2 else None,
        "top_prior_hash": loaded.top_prior_hash,
        "grid": str(grid),
        "images": paths,
        "vqvae_hash": loaded.vqvae_hash,
        "prior_hash": loaded.prior_hash,
    }
    atomic_write_json(out_dir / "samples.json", summary)
    if record:
        atomic_write_json(loaded.root.metrics / "sampling.json", summary)
    return summary


def sampling_suffix(sampling: Sampling) -> str:
    """How file names of realism samples and scores mark a temperature other than 1 (``_T0.8``), a
    nucleus below 1 (``_p0.9``), and top-map settings that differ from the bottom's (``_topT1``,
    ``_topp1``), then ``_nocheck`` when top maps with no background were kept."""
    temperature, top_p, top_temperature, top_top_p, background_check = sampling
    temperature_differs, top_p_differs = sampling.top_map_differs()
    suffix = ("" if temperature == 1.0 else f"_T{temperature:g}") + ("" if top_p == 1.0 else f"_p{top_p:g}")
    suffix += f"_topT{top_temperature:g}" if temperature_differs else ""
    suffix += f"_topp{top_top_p:g}" if top_p_differs else ""
    return suffix + ("_nocheck" if background_check is False else "")


def realism_suffix(seed: int, sampling: Sampling) -> str:
    """How ``evaluate-samples --run`` marks its scores and figures (``RUN/metrics/realism_{split}{suffix}.json``):
    ``_seedS`` for a seed other than 0, then :func:`sampling_suffix`."""
    return ("" if seed == 0 else f"_seed{seed}") + sampling_suffix(sampling)


def draw_for_realism(
    loaded: LoadedRun,
    real_root: str | Path,
    split: str,
    n: int,
    sampling: Sampling,
    *,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """The folder of ``n`` samples that ``evaluate-samples --run`` scores: RUN/samples/realism_nN_seedS
    with :func:`sampling_suffix`. A slice-conditioned run draws them for the real split's mix of
    slices (:func:`brainvq.realism.matching_slices`). They are drawn again whenever a checkpoint, the
    sampling settings (``sampling``, from :func:`brainvq.sample.resolve_sampling`) or the slices
    differ from what the folder's ``samples.json`` says."""
    folder = loaded.root.samples / f"realism_n{n}_seed{seed}{sampling_suffix(sampling)}"
    slices = None
    if any(p is not None and p.config.condition_on_slice for p in (loaded.prior, loaded.top_prior)):
        real = load_split(real_root, split, in_memory=False).slice_indices()
        slices = None if bool((real < 0).any()) else matching_slices(real, n)  # a plain folder: no indices
    wanted: dict[str, Any] = {
        "vqvae_hash": loaded.vqvae_hash,
        "prior_hash": loaded.prior_hash,
        "top_prior_hash": loaded.top_prior_hash,
        **sampling._asdict(),
    }
    if slices is not None:
        wanted["slices"] = slices
    record = folder / "samples.json"
    drawn = json.loads(record.read_text()) if record.is_file() else {}
    drawn.setdefault("top_p", 1.0)  # folders drawn before top_p existed used the full distribution
    for level in ("temperature", "top_p"):  # and before the top map had its own, it followed the bottom's
        drawn.setdefault(f"top_map_{level}", drawn.get(level) if loaded.levels == 2 else None)
    drawn.setdefault("background_check", False if loaded.levels == 2 else None)  # and kept every top map
    if any(drawn.get(key) != value for key, value in wanted.items()):
        sample_run(loaded.root.root, n, seed=seed, **sampling._asdict(), slice_index=slices,
                   out=folder, device=device, progress=progress, record=False)  # fmt: skip
    return folder


# ----------------------------------------------------------------------------- the whole pipeline
def _checkpoint_hashes(run: RunDir) -> dict[str, str | None]:
    return {
        stage: file_hash(stage_checkpoint(run, stage)) if run.has_stage(stage) else None
        for stage in ("vqvae", "prior", "prior_top")
    }


def _completed(run: RunDir) -> list[str]:
    """Finished stages whose results still belong to the run's current checkpoints.

    ``pipeline.json`` records the hashes of the VQ-VAE and prior checkpoints at each mark; when a
    checkpoint changed since (retrained, resumed, replaced), every later stage counts as not done.
    """
    path = run.root / "pipeline.json"
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    done, recorded, current = list(record.get("completed", [])), record.get("hashes", {}), _checkpoint_hashes(run)
    if "train-vqvae" in done and (current["vqvae"] is None or recorded.get("vqvae") != current["vqvae"]):
        return ["train-vqvae"] if current["vqvae"] is not None else []
    priors_changed = current["prior"] is None or any(
        recorded.get(stage) != current[stage] for stage in ("prior", "prior_top")
    )
    if "train-prior" in done and priors_changed:
        return [s for s in done if s in ("train-vqvae", "encode")]
    return done


def _mark(run: RunDir, stage: str) -> None:
    done = _completed(run)
    if stage not in done:
        done.append(stage)
    atomic_write_json(run.root / "pipeline.json", {"completed": done, "hashes": _checkpoint_hashes(run)})


def _prior_is_current(run: RunDir, stage: str = "prior") -> bool:
    if not run.has_stage(stage) or not run.has_stage("vqvae"):
        return False
    made_by = load_checkpoint(run.checkpoint(stage, "last")).get("vqvae_hash")
    return bool(made_by == file_hash(stage_checkpoint(run, "vqvae")))


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
    check_data_root(config.data.root)
    data_root = config.data.root
    priors = ["prior"] + (["top_prior"] if config.model.levels == 2 else [])
    conditioned = [name for name in priors if getattr(config, name).condition_on_slice]
    if conditioned and not is_oasis_root(Path(data_root)):  # every --set it needs, in one message
        raise RunError(
            f"{data_root}: a plain folder of PNGs has no slice indices, but "
            f"{' and '.join(f'{name}.condition_on_slice' for name in conditioned)} "
            f"{'is' if len(conditioned) == 1 else 'are'} true; add "
            f"{' '.join(f'--set {name}.condition_on_slice=false' for name in conditioned)} (or use the OASIS layout)"
        )
    splits = available_splits(Path(data_root)) if is_oasis_root(Path(data_root)) else [config.data.train_split]
    check_no_leak(data_root)
    load_split(data_root, config.data.train_split, in_memory=False)  # names, layout, the first image
    # everything checked: only now may --force replace the old run
    if force and run.root.exists() and is_main_process():
        remove_owned(run.root, "brainvq run")
    if is_main_process():
        run.claim()
    eval_splits = [s for s in (config.data.val_split, "test") if s and s in splits]
    summary: dict[str, Any] = {"run": str(run.root)}
    started = time.perf_counter()

    def stage(name: str, action: Any, every_rank: bool = False) -> None:
        """Run one stage unless done; under a distributed launch only rank 0 runs the others' stages."""
        barrier()  # every rank reaches each stage together (a no-op without a process group)
        if not every_rank and not is_main_process():
            return
        if name in _completed(run):
            log(f"[pipeline] {name}: already complete, skipped")
            return
        log(f"[pipeline] {name} ...")
        t0 = time.perf_counter()
        summary[name] = action()
        summary[name + "_seconds"] = time.perf_counter() - t0
        if is_main_process():
            _mark(run, name)

    stage(
        "train-vqvae",
        lambda: train_vqvae(config, run.root, resume=run.has_stage("vqvae"), progress=progress),
        every_rank=True,
    )
    encode_splits = [s for s in (config.data.train_split, *eval_splits) if s in splits]
    stage("encode", lambda: encode_run(run.root, data_root, encode_splits, device=device))

    def prior_stage() -> dict[str, Any]:
        results = {}
        for level in run_prior_levels(run.root, "all"):  # two-level runs: the top prior, then the bottom
            name = PRIOR_STAGES[level]
            current = _prior_is_current(run, name)  # a prior made for an older VQ-VAE starts over
            stale = run.has_stage(name) and not current
            results[level] = train_prior(
                config, run.root, resume=current, force=stale, progress=progress, level=level
            )
        return results["bottom"] if len(results) == 1 else results

    stage(
        "train-prior",
        prior_stage,
        every_rank=True,
    )
    for split in eval_splits:
        stage(f"evaluate-{split}", lambda split=split: evaluate_run(run.root, data_root, split, device=device))
    stage(
        "sample",
        lambda: sample_run(
            run.root,
            samples,
            seed=config.sample.seed,  # temperatures and nuclei: the run's config.yaml (load_run)
            batch_size=config.sample.batch_size,
            sampler=config.sample.sampler,
            device=device,
            progress=progress,
        ),
    )
    stage("figures", lambda: [str(p) for p in all_training_figures(run)])
    barrier()
    if not is_main_process():
        return summary
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
                for k in (
                    "images",
                    "ssim",
                    "psnr",
                    "ms_ssim",
                    "codes_used",
                    "prior_nll_bits",
                    "prior_accuracy",
                    "top_prior_nll_bits",
                    "top_prior_accuracy",
                )
                if k in data
            }
    path = run.metrics / "sampling.json"
    if path.is_file():
        data = json.loads(path.read_text())
        result["sampling"] = {k: data[k] for k in ("n", "seconds", "sampler", "device")}
    return result
