"""How real are the samples: realism, coverage, anatomy, slice fidelity, diversity and memorisation,
all measured with brainvq's own judge (see :mod:`brainvq.judge`), never with Inception weights.

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

import hashlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from brainvq.data import SliceDataset, iterate_batches, load_split, record_slice
from brainvq.errors import DataError
from brainvq.files import atomic_save_figure, atomic_torch_save, atomic_write_json
from brainvq.judge import LoadedJudge, judge_images, score_dataset, tissue_fractions
from brainvq.metrics import ms_ssim_per_image, ms_ssim_supported, ssim_per_image

NEIGHBOUR_CANDIDATES = 8
DIVERSITY_PAIRS = 1000
FLOOR_DRAWS = 20
KNN = 3
NOTE = "fd_judge/kid_judge are computed in the brainvq judge's features, not Inception's: not comparable to FID"


@dataclass
class ImageSet:
    """A set of slices to score: uint8 pixels (N, 1, H, W) and, when known, the slice each shows."""

    name: str
    pixels: torch.Tensor
    slices: torch.Tensor | None = None  # (N,) requested or true slice index, -1 unknown

    def __len__(self) -> int:
        return len(self.pixels)

    def images(self, indices: slice | list[int] | None = None) -> torch.Tensor:
        chosen = self.pixels if indices is None else self.pixels[indices]
        return chosen.float() / 255.0


@dataclass
class Judged:
    """The judge's view of an image set."""

    features: torch.Tensor  # (N, F)
    fractions: torch.Tensor  # (N, 3)
    slice_pred: torch.Tensor  # (N,)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def matching_slices(real_slices: torch.Tensor, n: int) -> list[int]:
    """``n`` slice indices spread like ``real_slices`` (their ``n`` evenly spaced quantiles), so that
    samples meet the real split slice for slice: a different mix of slices alone moves the Fréchet
    distance and recall (end slices look nothing like middle ones)."""
    ordered = real_slices.sort().values
    picks = torch.linspace(0, len(ordered) - 1, n).round().long()
    return [int(s) for s in ordered[picks]]


def dataset_pixels(dataset: SliceDataset, batch_size: int = 64) -> torch.Tensor:
    """Every image of a dataset as uint8 (N, 1, H, W), read batch by batch."""
    return torch.cat([to_uint8(batch["image"]) for batch in iterate_batches(dataset, batch_size)])


def folder_set(folder: str | Path, name: str = "samples") -> ImageSet:
    """Any folder of PNGs. With a ``samples.json`` (written by ``brainvq sample``) only the images it
    lists (not ``grid.png``), with the slices they were drawn for; otherwise every PNG, with slice
    indices from OASIS file names (``case_NNN_slice_K``) where they have them."""
    dataset = load_split(folder, "all", in_memory=False)
    slices = torch.tensor([record_slice(r) for r in dataset.records], dtype=torch.long)
    return ImageSet(name, dataset_pixels(dataset), slices if bool((slices >= 0).any()) else None)


@torch.no_grad()
def judge_set(judge: LoadedJudge, images: ImageSet, batch_size: int = 32) -> Judged:
    features, fractions, slices = [], [], []
    for start in range(0, len(images), batch_size):
        feats, labels, slice_pred = judge_images(
            judge.model, images.images(slice(start, start + batch_size)), judge.autocast
        )
        features.append(feats)
        fractions.append(tissue_fractions(labels))
        slices.append(slice_pred)
    return Judged(torch.cat(features), torch.cat(fractions), torch.cat(slices))


# ----------------------------------------------------------------------------- the metrics
class GivenFeatures(nn.Module):
    """Lets torchmetrics' FID/KID take features that were already computed (identity, ``num_features``)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_and_kid(real: torch.Tensor, fake: torch.Tensor) -> tuple[float, float, float]:
    """(Fréchet distance, KID mean, KID std) between feature sets (N, F) with torchmetrics."""
    extractor = GivenFeatures(real.shape[1])
    fid = FrechetInceptionDistance(feature=extractor, normalize=True)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    subset = min(100, len(real), len(fake))
    with warnings.catch_warnings():  # it keeps every feature: fine for the few thousand images here
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=GivenFeatures(real.shape[1]), subset_size=subset, normalize=True)
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from torch's global generator:
        torch.manual_seed(0)  # seed it for repeatable scores, and give the caller's state back
        kid_mean, kid_std = kid.compute()
    return float(fid.compute()), float(kid_mean), float(kid_std)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = KNN) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): a point is covered by a set when it
    lies within the distance from some member of that set to the member's k-th nearest neighbour."""
    real, fake = real.double(), fake.double()

    def radii(points: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(points, points)
        return distances.kthvalue(k + 1, dim=1).values  # the 0th neighbour is the point itself

    def covered(points: torch.Tensor, manifold: torch.Tensor, manifold_radii: torch.Tensor) -> float:
        return float((torch.cdist(points, manifold) <= manifold_radii[None, :]).any(dim=1).double().mean())

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def per_slice_fractions(fractions: torch.Tensor, slices: torch.Tensor, num_slices: int) -> torch.Tensor:
    """Mean CSF/GM/WM fractions per slice index (num_slices, 3); NaN where a slice has no image."""
    table = torch.full((num_slices, 3), float("nan"), dtype=torch.float64)
    for index in range(num_slices):
        chosen = slices == index
        if chosen.any():
            table[index] = fractions[chosen].double().mean(0)
    return table


def tissue_error(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Mean |fake - real| over the slice indices both tables have, and the three tissues."""
    both = ~(torch.isnan(real).any(1) | torch.isnan(fake).any(1))
    return float((fake[both] - real[both]).abs().mean()) if both.any() else float("nan")


class Diversity(NamedTuple):
    """Mean similarity of random pairs of a set's images, and its standard error over the pairs."""

    mean: float
    standard_error: float
    measure: str  # "ms_ssim", "ssim" (images too small for MS-SSIM) or "none" (fewer than 2 images)


def diversity(images: ImageSet, pairs: int = DIVERSITY_PAIRS, seed: int = 0) -> Diversity:
    """Mean MS-SSIM of ``pairs`` random distinct pairs (SSIM when images are too small for MS-SSIM).
    Pairs of different slice indices differ far more than pairs of the same one, so a pair's score
    spreads widely (a standard deviation of 0.05-0.09 on OASIS): over draws of 300 pairs the mean
    moved by 0.002-0.005 (standard deviation), as much as the differences between models, and over
    draws of 1,000 by 0.002-0.003 (``benchmarks/diversity_noise.py``)."""
    n = len(images)
    if n < 2:
        return Diversity(float("nan"), float("nan"), "none")
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(n, (pairs,), generator=generator)
    second = (first + torch.randint(1, n, (pairs,), generator=generator)) % n
    size = tuple(images.pixels.shape[-2:])
    measure, name = (ms_ssim_per_image, "ms_ssim") if ms_ssim_supported(size) else (ssim_per_image, "ssim")  # type: ignore[arg-type]
    values = torch.cat([
        measure(images.images(first[s : s + 50].tolist()), images.images(second[s : s + 50].tolist()))
        for s in range(0, pairs, 50)
    ]).double()  # fmt: skip
    return Diversity(float(values.mean()), float(values.std() / math.sqrt(pairs)), name)


def nearest_neighbour_ssim(
    images: ImageSet, features: torch.Tensor, train: SliceDataset, train_features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image, the highest SSIM to its ``NEIGHBOUR_CANDIDATES`` nearest training images in
    judge features: (best SSIM (N,), index of that training image (N,))."""
    candidates = (
        torch.cdist(features.double(), train_features.double()).topk(NEIGHBOUR_CANDIDATES, largest=False).indices
    )
    best = torch.zeros(len(images))
    which = torch.zeros(len(images), dtype=torch.long)
    for i in range(len(images)):
        options = candidates[i].tolist()
        neighbours = train.images(options)
        scores = ssim_per_image(images.images([i] * len(options)), neighbours)
        best[i], pick = scores.max(0)
        which[i] = options[int(pick)]
    return best, which


# ----------------------------------------------------------------------------- the command
@dataclass
class Reference:
    """The real side of every comparison, computed once."""

    real: ImageSet  # half B of the split: what every set is compared against
    real_judged: Judged
    real_table: torch.Tensor
    train: SliceDataset
    train_features: torch.Tensor
    threshold: float  # 99th percentile of real held-out slices' nearest-training-image SSIM
    num_slices: int


def score_set(
    judge: LoadedJudge,
    images: ImageSet,
    reference: Reference,
    judged: Judged | None = None,
    nearest: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Every score of one image set against the reference (the JSON's shape for one set); ``judged``
    and ``nearest`` skip recomputing what the reference already computed for the same images."""
    judge.check_size(tuple(images.pixels.shape[-2:]), images.name)  # type: ignore[arg-type]
    judged = judged if judged is not None else judge_set(judge, images)
    fd, kid, kid_std = frechet_and_kid(reference.real_judged.features, judged.features)
    precision, recall = precision_recall(reference.real_judged.features, judged.features)
    slices = images.slices if images.slices is not None else judged.slice_pred
    table = per_slice_fractions(judged.fractions, slices, reference.num_slices)
    slice_error = None
    if images.slices is not None and bool((images.slices >= 0).any()):
        known = images.slices >= 0
        slice_error = float((judged.slice_pred[known] - images.slices[known]).abs().float().mean())
    spread = diversity(images)
    nn_ssim, nn_index = nearest or nearest_neighbour_ssim(
        images, judged.features, reference.train, reference.train_features
    )
    return {
        "n": len(images),
        "fd_judge": fd,
        "kid_judge": kid,
        "kid_judge_std": kid_std,
        "precision": precision,
        "recall": recall,
        "tissue_error": tissue_error(reference.real_table, table),
        "slice_error": slice_error,
        "ms_ssim_diversity": spread.mean,
        "ms_ssim_diversity_se": spread.standard_error,
        "diversity_measure": spread.measure,
        "memorised_fraction": float((nn_ssim > reference.threshold).float().mean()),
        "nearest_train_ssim_median": float(nn_ssim.median()),
        "_table": table,
        "_slices": slices,
        "_nn": (nn_ssim, nn_index),
    }


def draw_like(pool_slices: torch.Tensor, wanted: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices into a pool of real slices with the slice indices of ``wanted`` (entries < 0 and
    indices the pool lacks are skipped). Each slice index takes the pool's images of it in a random
    order, so none is used twice before all were used once."""
    picks = []
    for index in wanted[wanted >= 0].unique().tolist():
        pool = torch.nonzero(pool_slices == index).flatten()
        if len(pool) == 0:
            continue
        need = int((wanted == index).sum())
        rounds = -(-need // len(pool))
        order = torch.cat([pool[torch.randperm(len(pool), generator=generator)] for _ in range(rounds)])
        picks.append(order[:need])
    return torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)


def real_same_n(
    reference: Reference,
    half_a: ImageSet,
    judged: Judged,
    nearest_ssim: torch.Tensor,
    wanted: torch.Tensor,
    draws: int = FLOOR_DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """The real floor at a set's own size and slice mix: ``draws`` sets of real half-A slices with the
    slice indices ``wanted`` (see :func:`draw_like`), each scored against half B like the samples.
    Returns each score's mean over the draws and its standard deviation (``<score>_std``). Diversity
    is not drawn (a mean over pairs does not depend on the set's size): it is None."""
    generator = torch.Generator().manual_seed(seed)
    slices = half_a.slices if half_a.slices is not None else judged.slice_pred
    scores: dict[str, list[float]] = {k: [] for k in ("fd_judge", "kid_judge", "precision", "recall",
                                                     "tissue_error", "slice_error", "memorised_fraction")}  # fmt: skip
    for _ in range(draws):
        pick = draw_like(slices, wanted, generator)
        if len(pick) < 2:
            return {}
        fd, kid, _ = frechet_and_kid(reference.real_judged.features, judged.features[pick])
        precision, recall = precision_recall(reference.real_judged.features, judged.features[pick])
        table = per_slice_fractions(judged.fractions[pick], slices[pick], reference.num_slices)
        scores["fd_judge"].append(fd)
        scores["kid_judge"].append(kid)
        scores["precision"].append(precision)
        scores["recall"].append(recall)
        scores["tissue_error"].append(tissue_error(reference.real_table, table))
        if half_a.slices is not None:  # else the judge's own guesses stand in for the slices: no error to score
            scores["slice_error"].append(float((judged.slice_pred[pick] - slices[pick]).abs().float().mean()))
        scores["memorised_fraction"].append(float((nearest_ssim[pick] > reference.threshold).float().mean()))
    result: dict[str, Any] = {"n": len(pick), "draws": draws, "ms_ssim_diversity": None}
    for key, values in scores.items():
        result[key] = float(np.mean(values)) if values else None
        result[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return result


def build_reference(
    judge: LoadedJudge, real_root: str | Path, split: str, train_root: str | Path, cache: Path | None
) -> tuple[Reference, ImageSet, Judged, tuple[torch.Tensor, torch.Tensor]]:
    """Split S into two halves by subject (alternating ids), judge the train split (cached), and set
    the memorisation threshold. Returns the reference (half B), half A (the real "scored" set), and
    the judge's view and nearest training slices of half A, already computed here."""
    if split == "train":
        raise DataError("--split must be a held-out split (validate or test), never train")
    real = load_split(real_root, split, in_memory=False)
    judge.check_size(real.image_size, real.records[0].path.parent)
    subjects = sorted({r.subject for r in real.records})
    half_a = {s for i, s in enumerate(subjects) if i % 2 == 0} if len(subjects) > 1 else set()
    pixels = dataset_pixels(real)
    slices = real.slice_indices()
    in_a = torch.tensor([r.subject in half_a for r in real.records])
    if not half_a:  # no subject ids (a plain folder): halves by position
        in_a = torch.arange(len(real)) % 2 == 0
    set_a = ImageSet(f"real {split} (half A)", pixels[in_a], slices[in_a])
    set_b = ImageSet(f"real {split} (half B)", pixels[~in_a], slices[~in_a])
    train = load_split(train_root, "train", in_memory=False)
    judge.check_size(train.image_size, train.records[0].path.parent)
    train_features = _train_features(judge, train, cache)
    whole = ImageSet(f"real {split}", pixels, slices)
    whole_judged, nn_real, nn_index = judged_real(judge, whole, real, train, train_features, cache)

    def part(mask: torch.Tensor) -> Judged:
        return Judged(whole_judged.features[mask], whole_judged.fractions[mask], whole_judged.slice_pred[mask])

    judged_b = part(~in_a)
    num_slices = judge.model.config.num_slices
    table_b = per_slice_fractions(
        judged_b.fractions, set_b.slices if set_b.slices is not None else judged_b.slice_pred, num_slices
    )
    threshold = float(torch.quantile(nn_real, 0.99))
    reference = Reference(set_b, judged_b, table_b, train, train_features, threshold, num_slices)
    return reference, set_a, part(in_a), (nn_real[in_a], nn_index[in_a])


def file_stamps(dataset: SliceDataset) -> list[str]:
    """Each file's path, size and modification time: what a cache of features is keyed by, so
    re-sliced data under the same names is judged again, not served stale features."""
    return [f"{r.path}:{r.path.stat().st_size}:{r.path.stat().st_mtime_ns}" for r in dataset.records]


def _train_features(judge: LoadedJudge, train: SliceDataset, cache: Path | None) -> torch.Tensor:
    key = hashlib.sha256("\n".join([judge.hash, *file_stamps(train)]).encode()).hexdigest()[:16]
    path = cache / f"train_features_{key}.pt" if cache is not None else None
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    features = score_dataset(judge.model, train, 32, judge.autocast).features  # streamed, batch by batch
    if path is not None:
        atomic_torch_save(path, features)
    return features


class JudgedReal(NamedTuple):
    """The judge's view of a real split and each slice's nearest training image."""

    judged: Judged
    nearest_ssim: torch.Tensor  # (N,)
    nearest_index: torch.Tensor  # (N,) into the train split


def judged_real(
    judge: LoadedJudge,
    whole: ImageSet,
    real: SliceDataset,
    train: SliceDataset,
    train_features: torch.Tensor,
    cache: Path | None,
) -> JudgedReal:
    """The judge's view of the whole real split and each slice's nearest training image (SSIM, index):
    the same for every set scored against this split, so cached by the judge, the real files (path,
    size, modification time) and the training files (likewise)."""
    key_text = "\n".join([judge.hash, *file_stamps(real), "train", *file_stamps(train)])
    path = cache / f"real_{hashlib.sha256(key_text.encode()).hexdigest()[:16]}.pt" if cache is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=True)
        judged = Judged(saved["features"], saved["fractions"], saved["slice_pred"])
        return JudgedReal(judged, saved["nn_ssim"], saved["nn_index"])
    judged = judge_set(judge, whole)
    nn_ssim, nn_index = nearest_neighbour_ssim(whole, judged.features, train, train_features)
    if path is not None:
        saved = {"features": judged.features, "fractions": judged.fractions, "slice_pred": judged.slice_pred}
        atomic_torch_save(path, {**saved, "nn_ssim": nn_ssim, "nn_index": nn_index})
    return JudgedReal(judged, nn_ssim, nn_index)


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
