"""How real are the samples: realism, coverage, anatomy, slice fidelity, diversity and memorisation,
all measured with brainvq's own judge (see :mod:`brainvq.evaluation.judge`), never with Inception weights.

``evaluate_samples`` scores a set of generated slices against the real slices of a held-out split:

* ``fd_judge`` / ``kid_judge``: Fréchet distance (Heusel et al. 2017) and kernel inception distance
  (Bińkowski et al. 2018) computed by torchmetrics in the judge's pooled encoder features. They are
  *not* Inception FID/KID and are only comparable between scores that carry the same ``judge_hash``;
* ``precision`` / ``recall`` (Kynkäänniemi et al. 2019, k = 3) in the same features: how many
  samples fall inside the real manifold, and how much of the real manifold the samples cover;
* ``tissue_error``: the judge segments every image; the mean absolute difference between the
  samples' and the real slices' CSF/GM/WM fractions, per slice index, averaged over slices and tissues;
* ``slice_error``: for samples drawn for a requested slice, the judge's mean |predicted - requested|;
* ``ms_ssim_diversity``: mean MS-SSIM (Wang et al. 2003) of 1,000 random pairs of samples (lower =
  more varied), with its standard error over the pairs (``ms_ssim_diversity_se``);
* ``memorised_fraction``: each sample's nearest training image (judge features pre-filter, then
  SSIM on pixels); the fraction whose nearest-neighbour SSIM exceeds the 99th percentile of the same
  statistic for the real held-out slices.

Every number comes with references on the same scale: real slices (half of the split's subjects
scored against the other half, the floor) and, when a run is given, the VQ-VAE's reconstructions of
them (what the decoder alone allows). All sets are compared with the same real half. Because the
Fréchet distance and the tissue error grow as a set gets smaller (fewer images per slice index leave
noise that an absolute difference never averages out), the floor is also given at the samples' own
size and slice mix (``real_same_n``: the mean over draws of real half-A slices), which is what an
ideal generator would score. The judge's view of the train split and of the real split (with each
real slice's nearest training image) is cached in the judge's folder, so scoring another set
against the same split skips both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainvq.data.dataset import SliceDataset
from brainvq.errors import DataError
from brainvq.evaluation.judge import LoadedJudge
from brainvq.evaluation.reference import (
    build_reference,
    real_same_n,
    score_set,
)
from brainvq.evaluation.scores import (
    KNN,
    NOTE,
    ImageSet,
    folder_set,
    to_uint8,
)
from brainvq.files import atomic_save_figure, atomic_write_json


def evaluate_samples(
    judge: LoadedJudge,
    samples: ImageSet,
    real_root: str | Path,
    split: str,
    *,
    train_root: str | Path,
    reconstruct: Callable[[ImageSet], ImageSet] | None = None,
    cache: Path | None = None,
    figures: Path | None = None,
) -> dict[str, Any]:
    """Score ``samples`` (and the references) against split ``split`` of ``real_root``; see the module doc.

    ``reconstruct`` maps the real half-A slices to a model's reconstructions of them (the
    ``reconstruction`` reference); :func:`vqvae_reconstructor` makes one from a run."""
    if len(samples) < KNN + 1:
        raise DataError(
            f"{samples.name}: need at least {KNN + 1} images to score (precision and recall use each image's "
            f"{KNN} nearest neighbours), got {len(samples)}"
        )
    reference, half_a, half_a_judged, half_a_nearest = build_reference(judge, real_root, split, train_root, cache)
    scored = score_set(judge, samples, reference)
    references = {"real": score_set(judge, half_a, reference, half_a_judged, half_a_nearest)}
    floor = real_same_n(reference, half_a, half_a_judged, half_a_nearest[0], scored["_slices"])
    if floor:
        references["real_same_n"] = floor
    if reconstruct is not None:
        references["reconstruction"] = score_set(judge, reconstruct(half_a), reference)
    if figures is not None:
        tissue_figure(reference.real_table, scored["_table"], figures / "tissue_fractions.png", samples.name)
        memorisation_figure(samples, scored["_nn"], reference.train, figures / "memorisation_pairs.png")
    result = _public(scored)
    result.update(
        judge_hash=judge.hash,
        real=str(real_root),
        split=split,
        real_n=len(reference.real),
        train=str(train_root),
        memorisation_threshold_ssim=reference.threshold,
        note=NOTE,
        reference={name: _public(values) for name, values in references.items()},
    )
    return result


def vqvae_reconstructor(loaded: Any, batch_size: int = 32) -> Callable[[ImageSet], ImageSet]:
    """Reconstructions by a loaded run's VQ-VAE (``decode(encode(x))``), at the device's precision."""
    from brainvq.devices import autocast_context, autocast_dtype, inference_precision

    dtype = autocast_dtype(inference_precision(loaded.device))

    @torch.no_grad()
    def reconstruct(images: ImageSet) -> ImageSet:
        out = []
        for start in range(0, len(images), batch_size):
            batch = images.images(slice(start, start + batch_size)).to(loaded.device)
            with autocast_context(loaded.device, dtype):
                out.append(to_uint8(loaded.vqvae(batch).recon.float().cpu()))
        return ImageSet(f"VQ-VAE reconstructions of {images.name}", torch.cat(out), images.slices)

    return reconstruct


def _public(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scores.items() if not k.startswith("_")}


# ----------------------------------------------------------------------------- figures
def tissue_figure(real: torch.Tensor, fake: torch.Tensor, path: Path, label: str) -> Path:
    """CSF/GM/WM fraction of the image against slice index, real and generated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharex=True)
    index = np.arange(len(real))
    for column, (axis, tissue) in enumerate(zip(axes, ("CSF", "grey matter", "white matter"), strict=True)):
        axis.plot(index, real[:, column].numpy(), "k-", label="real (held-out half)")
        axis.plot(index, fake[:, column].numpy(), "o--", color="tab:red", markersize=3, label=label)
        axis.set_title(tissue)
        axis.set_xlabel("slice index")
    axes[0].set_ylabel("fraction of the image (judge's segmentation)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    atomic_save_figure(path, figure, dpi=110)
    plt.close(figure)
    return path


def memorisation_figure(
    samples: ImageSet, nearest: tuple[torch.Tensor, torch.Tensor], train: SliceDataset, path: Path, count: int = 6
) -> Path:
    """The samples closest to a training image (by SSIM), each above its nearest training slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, which = nearest
    order = scores.argsort(descending=True)[:count].tolist()
    figure, axes = plt.subplots(2, len(order), figsize=(2.2 * len(order), 4.6), squeeze=False)
    for column, i in enumerate(order):
        axes[0, column].imshow(samples.images([i])[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, column].set_title(f"SSIM {float(scores[i]):.3f}", fontsize=8)
        axes[1, column].imshow(train.images([int(which[i])])[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[1, column].set_title(train.records[int(which[i])].path.name[:22], fontsize=6)
    for axis in axes.flat:
        axis.axis("off")
    figure.suptitle("closest pairs: sample (top) and its nearest training slice (bottom)", fontsize=9)
    figure.tight_layout()
    atomic_save_figure(path, figure, dpi=110)
    plt.close(figure)
    return path


def write_result(result: dict[str, Any], path: Path) -> Path:
    atomic_write_json(path, result)
    return path


def score_samples(
    judge_path: str | Path,
    real_root: str | Path,
    split: str = "validate",
    *,
    samples: str | Path | None = None,
    run: str | Path | None = None,
    n: int = 256,
    seed: int = 0,
    sampling_flags: tuple[Any, ...] = (None, None, None, None, None),
    train_root: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """``brainvq evaluate-samples``: score a folder of slices, or ``n`` slices drawn from a run (with its
    reconstructions as a reference), against ``split`` of ``real_root``; write the scores to
    ``OUT/metrics/realism_{split}{suffix}.json`` and the figures to ``OUT/figures/realism{suffix}``.
    ``sampling_flags``: temperature, top_p, top_map_temperature, top_map_top_p, background_check (None:
    the run's config)."""
    from brainvq.data.layout import available_splits, is_oasis_root
    from brainvq.evaluation.judge import load_judge
    from brainvq.runs import load_run
    from brainvq.sampling.files import draw_for_realism, realism_suffix
    from brainvq.sampling.settings import describe_sampling, resolve_sampling

    if (samples is None) == (run is None):
        raise DataError("give exactly one of --samples DIR or --run RUN (with --n N)")
    if any(v is not None for v in sampling_flags) and run is None:
        raise DataError(
            "the sampling flags (--temperature, --top-p, --top-map-*, --no-background-check) need --run"
        )
    judge = load_judge(judge_path, device)
    loaded, suffix, folder = None, "", None
    if run is not None:
        loaded = load_run(run, device)
        sampling = resolve_sampling(loaded.config.sample, loaded.levels, *sampling_flags)
        suffix = realism_suffix(seed, sampling)
        folder = draw_for_realism(
            loaded, real_root, split, n, sampling, seed=seed, device=device, progress=progress
        )
        images = folder_set(folder, f"samples ({run}, {describe_sampling(sampling)})")
        out = out or loaded.root.root
    else:
        images = folder_set(samples, f"samples ({samples})")  # type: ignore[arg-type]
    if train_root is None and loaded is not None and loaded.config.data.root:
        train_root = loaded.config.data.root
    if train_root is None and is_oasis_root(Path(real_root)) and "train" in available_splits(Path(real_root)):
        train_root = real_root
    if train_root is None:
        raise DataError("no training data for the memorisation check: pass --train DATA")
    figures = Path(out) / "figures" / (f"realism{suffix}" if suffix else "") if out else None
    result = evaluate_samples(
        judge, images, real_root, split, train_root=train_root, cache=Path(judge_path) / "cache", figures=figures,
        reconstruct=vqvae_reconstructor(loaded) if loaded is not None else None,
    )  # fmt: skip
    if loaded is not None and folder is not None:
        result.update(sampling._asdict())
        drawn = json.loads((folder / "samples.json").read_text())
        result.update(
            {key: drawn.get(key) for key in ("background_check", "redrawn_top_maps", "unresolved_top_maps")}
        )
    if out:
        atomic_write_json(Path(out) / "metrics" / f"realism_{split}{suffix}.json", result)
    return result
