"""Is a generated stack one brain? Metrics of whole stacks against real subjects.

Per-slice realism says nothing about whether 32 slices belong together. These metrics compare sets of
stacks (N, S, H, W) with real subjects' stacks of the held-out split:

* ``adjacent_ssim_w``: the distribution of SSIM between slices k and k+1 inside the head (every k of
  every stack), against the real subjects', as a Wasserstein distance;
* ``tissue_curve_w``: each stack's tissue-volume curves (the judge's CSF, GM and WM fractions along the
  slice index) summarised by their roughness (mean |f(k+1) - f(k)|), against the real subjects'
  roughness, as a Wasserstein distance; and ``tissue_curve_distance``: each stack's mean absolute
  distance to the nearest real subject's curves, averaged;
* ``through_plane_w``: the through-plane texture, judge-free: the distribution of |I(k+1) - I(k)| inside
  the head (the vertical gradient of the coronal and sagittal reslices), against the real subjects';
* ``nearest_train_subject_corr``: memorisation at the subject level, each stack's mean per-slice
  correlation with its nearest training subject (median over stacks; the same for held-out real
  subjects is the floor);
* variety, judge-free, each a mean MS-SSIM of random pairs (higher = more alike; nearer the floor is
  better): ``slice_diversity``, any two slices of the set (the per-slice ``ms_ssim_diversity``, here on
  whole stacks, so that the floor has the same shape); and its two parts, ``between_stacks``, slice k of
  two different stacks (stacks that drift towards one typical brain score high), and ``within_stack``,
  slices k and k + S/4 of one stack (a stack whose anatomy moves too little along the slices scores high).

The real subjects are split in two halves: the first is the reference every set is compared with,
the second is scored like any set, which gives the real-vs-real floor. Known answers: stacks of
independently drawn slices, and real slices shuffled across subjects (slice k of a random subject),
must score clearly worse than the floor on the first three.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from brainvq.data.dataset import load_split
from brainvq.errors import DataError
from brainvq.evaluation.metrics import foreground_mask, masked_metrics
from brainvq.evaluation.scores import pair_similarity

THROUGH_PLANE_PIXELS = 200_000  # per set: an even subsample of the head's pixel differences
VARIETY_PAIRS = 500  # per variety score and set: a standard error of about 0.003 on OASIS


def read_stacks(root: str | Path, split: str, limit: int | None = None) -> tuple[np.ndarray, list[int]]:
    """The complete stacks (N, S, H, W) float32 of a split in the OASIS layout, by subject, in slice order."""
    dataset = load_split(root, split, in_memory=False)
    by_subject: dict[int, dict[int, int]] = defaultdict(dict)
    for index, record in enumerate(dataset.records):
        by_subject[record.subject][record.slice_index] = index
    count = max(len(v) for v in by_subject.values())
    subjects = [s for s, v in sorted(by_subject.items()) if sorted(v) == list(range(count))][:limit]
    if not subjects:
        raise DataError(f"{root}: no subject of split {split} has every slice 0..{count - 1}")
    stacks = [dataset.images([by_subject[s][k] for k in range(count)])[:, 0].numpy() for s in subjects]
    return np.stack(stacks), subjects


def shuffled_stacks(stacks: np.ndarray, seed: int = 0) -> np.ndarray:
    """Stacks whose slice k comes from a random subject (the known answer: real slices, no brain)."""
    rng = np.random.default_rng(seed)
    count, slices = stacks.shape[:2]
    return np.stack([stacks[rng.integers(count, size=slices), np.arange(slices)] for _ in range(count)])


def adjacent_ssim(stacks: np.ndarray) -> np.ndarray:
    """SSIM of every slice k with slice k+1 inside the head (either slice's foreground), flat (N*(S-1),)."""
    images = torch.from_numpy(stacks).float()
    lower = images[:, :-1].reshape(-1, 1, *images.shape[2:])  # (N, S-1, H, W) -> (N*(S-1), 1, H, W)
    upper = images[:, 1:].reshape(-1, 1, *images.shape[2:])
    head = foreground_mask(lower) | foreground_mask(upper)
    values = []
    for start in range(0, len(lower), 64):
        ssim, _, valid = masked_metrics(
            lower[start : start + 64], upper[start : start + 64], head[start : start + 64]
        )
        values.append(ssim[valid])
    return torch.cat(values).numpy()


def through_plane_differences(stacks: np.ndarray, seed: int = 0) -> np.ndarray:
    """|I(k+1) - I(k)| at head pixels, subsampled evenly to :data:`THROUGH_PLANE_PIXELS`."""
    differences = np.abs(np.diff(stacks, axis=1))  # (N, S-1, H, W)
    head = (stacks[:, 1:] > 0.1) | (stacks[:, :-1] > 0.1)
    values = differences[head]
    step = max(1, len(values) // THROUGH_PLANE_PIXELS)
    return values[::step]


def stack_labels(judge: Any, stacks: np.ndarray) -> np.ndarray:
    """The judge's tissue label (0-3) of every pixel of every stack (N, S, H, W) uint8."""
    from brainvq.evaluation.judge import judge_images

    flat = torch.from_numpy(stacks).float().reshape(-1, 1, *stacks.shape[2:])  # (N, S, H, W) -> (N*S, 1, H, W)
    labels = [judge_images(judge.model, flat[i : i + 32], judge.autocast)[1] for i in range(0, len(flat), 32)]
    return torch.cat(labels).to(torch.uint8).reshape(stacks.shape).numpy()  # (N*S, H, W) -> (N, S, H, W)


def tissue_curves(judge: Any, stacks: np.ndarray) -> np.ndarray:
    """The judge's CSF/GM/WM fractions of every slice (N, S, 3)."""
    labels = stack_labels(judge, stacks)
    return np.stack([(labels == tissue).mean(axis=(2, 3)) for tissue in (1, 2, 3)], axis=-1)  # (N, S, 3)


def roughness(curves: np.ndarray) -> np.ndarray:
    """Each stack's mean |f(k+1) - f(k)| over slices and tissues (N,)."""
    return np.abs(np.diff(curves, axis=1)).mean(axis=(1, 2))


def nearest_curve_distance(curves: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each stack's mean |f - g| to the nearest reference subject's curves g (N,)."""
    distances = np.abs(curves[:, None] - reference[None]).mean(axis=(2, 3))  # (N, R)
    return distances.min(axis=1)


def nearest_subject_correlation(stacks: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Each stack's mean per-slice Pearson correlation with its nearest training subject (N,)."""

    def normalised(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(*x.shape[:2], -1).astype(np.float32)  # (N, S, H, W) -> (N, S, H*W)
        flat -= flat.mean(-1, keepdims=True)
        flat /= np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-12)
        return np.ascontiguousarray(flat.transpose(1, 0, 2))  # (S, N, H*W): one matrix product per slice

    a, b = normalised(stacks), normalised(train)
    correlation = np.matmul(a, b.transpose(0, 2, 1)).mean(axis=0)  # (S, N, T) -> (N, T): mean over slices
    return correlation.max(axis=1)


class StackVariety(NamedTuple):
    """How alike a set's slices are (mean MS-SSIM of random pairs; SSIM for images under 176 pixels)."""

    slice_diversity: float  # any two slices of the set
    between_stacks: float  # slice k of two different stacks
    within_stack: float  # slices k and k + S/4 of one stack


def stack_variety(stacks: np.ndarray, pairs: int = VARIETY_PAIRS, seed: int = 0) -> StackVariety:
    """The three variety scores of the module doc for stacks (N, S, H, W); NaN where a set is too small
    (fewer than two stacks for ``between_stacks``, fewer than two slices for ``within_stack``)."""
    count, slices = stacks.shape[:2]
    rng = np.random.default_rng(seed)
    stack, index = rng.integers(count, size=pairs), rng.integers(slices, size=pairs)
    result = [float("nan")] * 3
    if count * slices > 1:  # any other slice of the set
        other = (stack * slices + index + rng.integers(1, count * slices, size=pairs)) % (count * slices)
        result[0] = _mean_similarity(stacks, (stack, index), divmod(other, slices))
    if count > 1:  # the same slice of another stack
        other_stack = (stack + rng.integers(1, count, size=pairs)) % count
        result[1] = _mean_similarity(stacks, (stack, index), (other_stack, index))
    gap = max(slices // 4, 1)
    if slices > gap:  # S/4 slices further along the same stack
        start = rng.integers(slices - gap, size=pairs)
        result[2] = _mean_similarity(stacks, (stack, start), (stack, start + gap))
    return StackVariety(*result)


def _mean_similarity(
    stacks: np.ndarray, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> float:
    """Mean MS-SSIM (SSIM for small images) between slices stacks[a] and stacks[b], pair by pair."""

    def pair_batch(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        left = torch.from_numpy(stacks[a[0][start:end], a[1][start:end]])  # (B, H, W): slice a[1] of stack a[0]
        right = torch.from_numpy(stacks[b[0][start:end], b[1][start:end]])
        return left.float().clamp(0, 1)[:, None], right.float().clamp(0, 1)[:, None]  # (B, H, W) -> (B, 1, H, W)

    height, width = stacks.shape[2:]
    values, _ = pair_similarity(pair_batch, len(a[0]), (int(height), int(width)))
    return float(values.mean())


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(a, b))


def score_stacks(
    sets: dict[str, np.ndarray], reference: np.ndarray, judge: Any | None = None, train: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
    """Every metric of the module doc for each named set of stacks against the ``reference`` stacks."""
    ref_ssim, ref_gradient = adjacent_ssim(reference), through_plane_differences(reference)
    ref_curves = tissue_curves(judge, reference) if judge is not None else None
    result: dict[str, dict[str, float]] = {}
    for name, stacks in sets.items():
        ssim = adjacent_ssim(stacks)
        scores = {
            "stacks": float(len(stacks)),
            "adjacent_ssim_mean": float(ssim.mean()),
            "adjacent_ssim_w": wasserstein(ssim, ref_ssim),
            "through_plane_w": wasserstein(through_plane_differences(stacks), ref_gradient),
        }
        if ref_curves is not None:
            curves = tissue_curves(judge, stacks)
            scores["tissue_roughness_mean"] = float(roughness(curves).mean())
            scores["tissue_curve_w"] = wasserstein(roughness(curves), roughness(ref_curves))
            scores["tissue_curve_distance"] = float(nearest_curve_distance(curves, ref_curves).mean())
        scores.update(stack_variety(stacks)._asdict())
        if train is not None:
            scores["nearest_train_subject_corr"] = float(np.median(nearest_subject_correlation(stacks, train)))
        result[name] = scores
    return result


def gap_closed(result: dict[str, dict[str, float]], model: str, baseline: str, floor: str, key: str) -> float:
    """The share of the gap between ``baseline`` and the real-vs-real ``floor`` that ``model`` closes on ``key``."""
    gap = result[baseline][key] - result[floor][key]
    return float((result[baseline][key] - result[model][key]) / gap) if gap else float("nan")


def independent_stacks(run: Any, count: int, seed: int) -> np.ndarray:
    """``count`` stacks of independently drawn slices 0..S-1 (today's sampler; the known answer)."""
    from brainvq.sampling.slices import sample

    slices = int(run.config.prior.num_slices)
    drawn = sample(run, count * slices, seed=seed, slice_index=list(range(slices)) * count, batch_size=slices)
    return (
        drawn.images[:, 0].numpy().reshape(count, slices, *drawn.images.shape[2:])
    )  # (N*S, 1, H, W) -> (N, S, H, W)


def evaluate_stacks(
    judge_path: str | Path,
    real_root: str | Path,
    split: str = "validate",
    *,
    run_root: str | Path | None = None,
    samples: str | Path | None = None,
    n: int = 8,
    seed: int = 0,
    train_root: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """``evaluate-samples --volumes``: the stack metrics of generated stacks and of the known answers,
    against real subjects of ``split``. The generated stacks are ``samples`` (a ``sample --volumes``
    folder) or, without it, ``n`` stacks drawn with the run's stack prior; a run also gives the baseline,
    ``n`` stacks of independently drawn slices, and the share of its gap to the floor that they close."""
    from brainvq.evaluation.judge import load_judge
    from brainvq.files import atomic_write_json

    judge = load_judge(judge_path, device)
    real, _ = read_stacks(real_root, split)
    if len(real) < 4:
        raise DataError(f"{real_root}: split {split} has {len(real)} complete subjects; the stack metrics need 4")
    reference, floor = real[: len(real) // 2], real[len(real) // 2 :]
    sets: dict[str, np.ndarray] = {"real (floor)": floor, "shuffled real slices": shuffled_stacks(floor, seed)}
    if samples is not None:
        sets["samples"] = read_stacks(samples, "generated")[0]
    if run_root is not None:
        from brainvq.runs import load_run
        from brainvq.sampling.stacks import sample_stacks

        run = load_run(run_root, device)
        if run.stack_prior is not None and samples is None:
            sets["stack prior"] = sample_stacks(run, n, seed=seed).images.numpy()
        sets["independent slices"] = independent_stacks(run, n, seed)
    train = read_stacks(train_root, "train")[0] if train_root is not None else None
    result: dict[str, Any] = {"split": split, "reference_subjects": len(reference), "seed": seed,
                              "sets": score_stacks(sets, reference, judge, train)}  # fmt: skip
    model = "stack prior" if "stack prior" in sets else "samples"
    if model in sets and "independent slices" in sets:
        result["gap_closed"] = {
            key: gap_closed(result["sets"], model, "independent slices", "real (floor)", key)
            for key in ("adjacent_ssim_w", "tissue_curve_w", "tissue_curve_distance", "through_plane_w")
        }
    if out is not None:
        from brainvq.sampling.stack_files import views_figure

        Path(out).mkdir(parents=True, exist_ok=True)
        shown: dict[str, np.ndarray] = {
            name: (np.clip(sets[name][:4], 0, 1) * 255).astype(np.uint8)
            for name in ("stack prior", "samples", "real (floor)", "independent slices")
            if name in sets
        }
        result["figure"] = str(views_figure(shown, Path(out) / "stacks_views.png"))
        atomic_write_json(Path(out) / "stack_scores.json", result)
    return result
