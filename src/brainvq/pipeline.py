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

from brainvq.codes import check_image_size, encode_dataset
from brainvq.config import Config
from brainvq.data.checks import check_data_root
from brainvq.data.dataset import check_no_leak, load_split
from brainvq.data.layout import available_splits, is_oasis_root
from brainvq.devices import (
    autocast_dtype,
    barrier,
    inference_precision,
    is_main_process,
    limit_heap_growth,
)
from brainvq.errors import RunError
from brainvq.evaluation.reconstruction import evaluate_run, open_split
from brainvq.figures import all_training_figures
from brainvq.files import remove_owned
from brainvq.runs import (
    RunDir,
    atomic_write_json,
    file_hash,
    load_checkpoint,
    load_run,
    stage_checkpoint,
)
from brainvq.sampling.files import sample_run
from brainvq.sampling.stack_files import draw_stacks
from brainvq.training.stages import run_prior_levels, train_prior, train_vqvae
from brainvq.training.tasks import PRIOR_STAGES


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
        dataset = open_split(data_root, split)
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
        for level in run_prior_levels(run.root, "all", config):  # two-level runs: the top priors, then the bottom
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
    if config.sample.stacks > 0 and config.model.levels == 2:
        stage("train-stack-prior", lambda: train_prior(config, run.root, resume=_prior_is_current(run, "prior_stack"),
                                                        force=run.has_stage("prior_stack") and not _prior_is_current(run, "prior_stack"),
                                                        progress=progress, level="stack"), every_rank=True)  # fmt: skip
        stage("sample-stacks", lambda: draw_stacks(run.root, config.sample.stacks, run.samples / "stacks",
                                                    seed=config.sample.seed, device=device))  # fmt: skip
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
