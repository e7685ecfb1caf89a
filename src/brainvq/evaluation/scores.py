"""The realism scores in the judge's features and on pixels: Fréchet distance and KID, precision and
recall, tissue error, diversity, and each image's nearest training image. See :mod:`brainvq.evaluation.samples`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from brainvq.data.dataset import SliceDataset, iterate_batches, load_split
from brainvq.data.layout import record_slice
from brainvq.evaluation.judge import LoadedJudge, judge_images, tissue_fractions
from brainvq.evaluation.metrics import ms_ssim_per_image, ms_ssim_supported, ssim_per_image

NEIGHBOUR_CANDIDATES = 8
DIVERSITY_PAIRS = 1000
PAIR_BATCH = 50  # pairs scored at once
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
    size = (int(images.pixels.shape[-2]), int(images.pixels.shape[-1]))
    values, name = pair_similarity(
        lambda start, end: (images.images(first[start:end].tolist()), images.images(second[start:end].tolist())),
        pairs,
        size,
    )
    return Diversity(float(values.mean()), float(values.std() / math.sqrt(pairs)), name)


def pair_similarity(
    pair_batch: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], count: int, size: tuple[int, int]
) -> tuple[torch.Tensor, str]:
    """Each of ``count`` pairs' similarity (count,) float64 and the measure's name: MS-SSIM, or SSIM
    for images too small for MS-SSIM (``size`` (H, W)). ``pair_batch(start, end)`` gives pairs
    start..end-1 as two (B, 1, H, W) tensors in [0, 1]; they are scored ``PAIR_BATCH`` at a time."""
    measure, name = (ms_ssim_per_image, "ms_ssim") if ms_ssim_supported(size) else (ssim_per_image, "ssim")
    values = [
        measure(*pair_batch(start, min(start + PAIR_BATCH, count))).double()
        for start in range(0, count, PAIR_BATCH)
    ]
    return torch.cat(values), name


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
