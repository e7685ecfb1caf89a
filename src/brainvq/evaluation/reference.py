"""The real side of every comparison: half of a held-out split as the reference, the other half as the
floor (also at the samples' own size), the training split for memorisation, and the caches that make
scoring another set against the same split cheap."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from brainvq.data.dataset import SliceDataset, load_split
from brainvq.errors import DataError
from brainvq.evaluation.judge import LoadedJudge, score_dataset
from brainvq.evaluation.scores import (
    FLOOR_DRAWS,
    ImageSet,
    Judged,
    dataset_pixels,
    diversity,
    frechet_and_kid,
    judge_set,
    nearest_neighbour_ssim,
    per_slice_fractions,
    precision_recall,
    tissue_error,
)
from brainvq.files import atomic_torch_save


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
    """Each file's name and a hash of its bytes: what a cache of features is keyed by, so re-sliced
    data under the same names is judged again, not served stale features, while the same data copied
    elsewhere or touched (new modification times) is not judged again (hashing 9,664 OASIS slices
    takes about 2 s; judging them again, about 20 minutes on a 2-core CPU)."""
    return [
        f"{r.path.name}:{hashlib.blake2b(r.path.read_bytes(), digest_size=16).hexdigest()}"
        for r in dataset.records
    ]


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
    the same for every set scored against this split, so cached by the judge, the real files (names and
    contents: :func:`file_stamps`) and the training files (likewise)."""
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
