"""What healthy looks like at each position: the reference every normalised anomaly map is measured against.

For a slice index k and a position, a healthy brain has a typical intensity (and spread) and each prior
has a typical surprise: edges, sulci and CSF are always hard to predict, so a raw likelihood map lights
them up in every brain. :class:`HealthyReference` holds, per slice index, the mean and standard
deviation over healthy training subjects of

* the intensity at every pixel (the intensity baseline's reference),
* each prior's per-code NLL in bits (bottom, top, and the reversed-order top prior when the run has one),

so a map can say "this code is 3 standard deviations more surprising than healthy brains are here".
It is computed once from the run's stored training code maps and the training images (a spread of
:data:`REFERENCE_SUBJECTS` subjects) and stored as ``RUN/metrics/anomaly_reference.pt``, keyed by the
checkpoints it was made with. Slices without an index (a plain folder) use the statistics pooled over
all slice indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from brainvq.anomaly.likelihood import code_nll_bits, reversed_top_nll_bits, top_nll_bits
from brainvq.codes import CodeMaps
from brainvq.errors import RunError
from brainvq.runs import LoadedRun, atomic_torch_save

REFERENCE_SUBJECTS = 48
INTENSITY_FLOOR = 0.02  # the smallest intensity spread a z-score divides by (background pixels have none)
NLL_FLOOR = 0.25  # bits: the smallest NLL spread a z-score divides by
FORMAT = "brainvq-anomaly-reference-v1"


@dataclass
class Statistics:
    """Mean and standard deviation per slice index (S, ...) and pooled over all slices (...)."""

    mean: torch.Tensor
    std: torch.Tensor
    pooled_mean: torch.Tensor
    pooled_std: torch.Tensor

    @classmethod
    def of(cls, values: torch.Tensor, slices: torch.Tensor, num_slices: int) -> Statistics:
        """``values`` (N, ...) with slice indices ``slices`` (N,) in 0..num_slices-1."""
        values = values.double()
        mean = torch.stack([values[slices == k].mean(0) if (slices == k).any() else values.mean(0)
                            for k in range(num_slices)])  # fmt: skip
        std = torch.stack([values[slices == k].std(0) if int((slices == k).sum()) > 1 else values.std(0)
                           for k in range(num_slices)])  # fmt: skip
        return cls(mean.float(), std.float(), values.mean(0).float(), values.std(0).float())

    def z(self, values: torch.Tensor, slices: torch.Tensor | None, floor: float) -> torch.Tensor:
        """(values - mean) / max(std, floor) at each slice's index (B, ...); pooled where unknown."""
        if slices is None or len(self.mean) == 0:
            return (values - self.pooled_mean) / self.pooled_std.clamp_min(floor)
        known = (slices >= 0) & (slices < len(self.mean))
        index = slices.clamp(0, len(self.mean) - 1)
        mean = torch.where(known.view(-1, *[1] * (values.dim() - 1)), self.mean[index], self.pooled_mean)
        std = torch.where(known.view(-1, *[1] * (values.dim() - 1)), self.std[index], self.pooled_std)
        return (values - mean) / std.clamp_min(floor)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std, "pooled_mean": self.pooled_mean, "pooled_std": self.pooled_std}


@dataclass
class HealthyReference:
    """Healthy statistics for a run (see the module doc); ``nll`` is keyed by prior level."""

    intensity: Statistics
    nll: dict[str, Statistics]
    subjects: int

    def intensity_z(self, images: torch.Tensor, slices: torch.Tensor | None) -> torch.Tensor:
        """(B, H, W) signed intensity z-scores of images (B, 1, H, W)."""
        return self.intensity.z(images[:, 0].float(), slices, INTENSITY_FLOOR)

    def nll_z(self, level: str, nll: torch.Tensor, slices: torch.Tensor | None) -> torch.Tensor:
        """(B, h, w) z-scores of a level's NLL map (B, h, w) in bits."""
        return self.nll[level].z(nll, slices, NLL_FLOOR)


def reference_key(run: LoadedRun) -> dict[str, str | None]:
    return {"vqvae_hash": run.vqvae_hash, "prior_hash": run.prior_hash, "top_prior_hash": run.top_prior_hash,
            "reversed": str(run.top_reversed_prior is not None)}  # fmt: skip


def healthy_reference(run: LoadedRun, data_root: str | Path | None = None) -> HealthyReference:
    """The run's stored reference, or a new one from its training code maps and images (then stored)."""
    path = run.root.metrics / "anomaly_reference.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("format") == FORMAT and saved.get("key") == reference_key(run):
            return HealthyReference(
                Statistics(**saved["intensity"]), {k: Statistics(**v) for k, v in saved["nll"].items()},
                int(saved["subjects"]),
            )  # fmt: skip
    reference = build_reference(run, data_root)
    atomic_torch_save(path, {
        "format": FORMAT, "key": reference_key(run), "intensity": reference.intensity.as_dict(),
        "nll": {k: v.as_dict() for k, v in reference.nll.items()}, "subjects": reference.subjects,
    })  # fmt: skip
    return reference


@torch.no_grad()
def build_reference(run: LoadedRun, data_root: str | Path | None = None) -> HealthyReference:
    from brainvq.data.dataset import load_split

    split = run.config.data.train_split
    code_path = run.root.code_file(split)
    if not code_path.is_file():
        raise RunError(
            f"{code_path}: the run's {split} code maps are needed for the healthy reference (run `brainvq encode`)"
        )
    codes = CodeMaps.load(code_path).check_made_by(run.vqvae_hash, code_path)
    root = data_root or run.config.data.root
    if root is None or not Path(root).is_dir():
        raise RunError(
            f"{run.root.root}: the training images ({root}) are needed for the healthy reference; pass --data-root"
        )
    subjects = codes.subjects.unique()
    chosen = subjects[torch.linspace(0, len(subjects) - 1, min(REFERENCE_SUBJECTS, len(subjects))).round().long()]
    picks = torch.nonzero(torch.isin(codes.subjects, chosen)).flatten()
    slices = codes.slices[picks]
    num_slices = int(slices.max()) + 1 if bool((slices >= 0).all()) else 0
    dataset = load_split(root, split, in_memory=False)
    by_name = {(r.subject, r.slice_index): i for i, r in enumerate(dataset.records)}
    found = [by_name.get((int(codes.subjects[i]), int(codes.slices[i]))) for i in picks]
    rows = [row for row in found if row is not None]
    if len(rows) != len(found):
        raise RunError(f"{root}: the {split} split no longer matches the run's code maps (run `brainvq encode`)")
    images = torch.cat([dataset.images(rows[s : s + 256]) for s in range(0, len(rows), 256)])  # (N, 1, H, W)
    key = slices.clamp_min(0)
    nll: dict[str, list[torch.Tensor]] = {"bottom": [], "top": [], "top_reversed": []}
    for start in range(0, len(picks), 32):
        part = picks[start : start + 32]
        known = slices[start : start + 32] if num_slices else None
        top = codes.top_indices[part].long() if codes.top_indices is not None else None
        nll["bottom"].append(code_nll_bits(run, codes.indices[part].long(), known, top))
        if top is not None and run.top_prior is not None:
            nll["top"].append(top_nll_bits(run, top, known))
            if run.top_reversed_prior is not None:
                nll["top_reversed"].append(reversed_top_nll_bits(run, top, known))
    return HealthyReference(
        Statistics.of(images[:, 0], key, num_slices),
        {level: Statistics.of(torch.cat(parts), key, num_slices) for level, parts in nll.items() if parts},
        len(chosen),
    )
