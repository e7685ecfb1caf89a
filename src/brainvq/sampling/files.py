"""Samples on disk: ``brainvq sample`` (PNGs, ``grid.png``, ``samples.json``) and the sample folders that
``evaluate-samples --run`` scores, named after their settings and drawn again when anything changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from brainvq.data.dataset import load_split
from brainvq.devices import (
    resolve_device,
)
from brainvq.figures import image_grid
from brainvq.runs import (
    LoadedRun,
    atomic_save_image,
    atomic_write_json,
    load_run,
)
from brainvq.sampling.settings import Sampling, describe_sampling
from brainvq.sampling.slices import sample


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
    ``sample`` config (:func:`brainvq.sampling.resolve_sampling`). ``record`` also makes this the run's sampling
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
    slices (:func:`brainvq.evaluation.scores.matching_slices`). They are drawn again whenever a checkpoint, the
    sampling settings (``sampling``, from :func:`brainvq.sampling.resolve_sampling`) or the slices
    differ from what the folder's ``samples.json`` says."""
    folder = loaded.root.samples / f"realism_n{n}_seed{seed}{sampling_suffix(sampling)}"
    slices = None
    if any(p is not None and p.config.condition_on_slice for p in (loaded.prior, loaded.top_prior)):
        real = load_split(real_root, split, in_memory=False).slice_indices()
        from brainvq.evaluation.scores import matching_slices  # here: the judge's stack is heavy to import

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
