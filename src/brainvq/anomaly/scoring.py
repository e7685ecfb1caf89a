"""How good a map is against lesion masks: pixel AP and AUROC, best Dice, Dice at a chosen threshold."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from brainvq.anomaly.maps import image_score


@dataclass
class PixelScores:
    """Accumulates one method's maps over a split for pixel- and image-level scores."""

    values: list[torch.Tensor]
    truths: list[torch.Tensor]
    image_scores: list[float]
    image_truths: list[bool]

    @classmethod
    def empty(cls) -> PixelScores:
        return cls([], [], [], [])

    def update(self, maps: torch.Tensor, truth: torch.Tensor, brain: torch.Tensor) -> None:
        """Maps and truth (B, H, W); only brain pixels count (as in MOOD)."""
        self.values.append(maps[brain].half())
        self.truths.append(truth[brain])
        self.image_scores += image_score(maps).tolist()
        self.image_truths += truth.flatten(1).any(1).tolist()

    def summary(self) -> dict[str, float]:
        from torchmetrics.functional.classification import binary_auroc, binary_average_precision

        values = torch.cat(self.values).float()
        truths = torch.cat(self.truths)
        result = {
            "pixel_ap": float(binary_average_precision(values, truths.long())),
            "pixel_auroc": float(binary_auroc(values, truths.long())),
        }
        result.update(best_dice(values, truths))
        scores, labels = torch.tensor(self.image_scores), torch.tensor(self.image_truths).long()
        if 0 < int(labels.sum()) < len(labels):
            result["image_auroc"] = float(binary_auroc(scores, labels))
            result["image_ap"] = float(binary_average_precision(scores, labels))
        return result


def best_dice(values: torch.Tensor, truths: torch.Tensor, bins: int = 2000) -> dict[str, float]:
    """The best Dice over thresholds (global over the split), from histograms of the map values."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return {"best_dice": 0.0, "best_dice_threshold": high}
    edges = torch.linspace(low, high, bins + 1)
    positives = torch.histc(values[truths], bins, low, high).flip(0).cumsum(0).flip(0)  # count >= edge
    negatives = torch.histc(values[~truths], bins, low, high).flip(0).cumsum(0).flip(0)
    total_true = float(truths.sum())
    dice = 2 * positives / (positives + negatives + total_true).clamp_min(1)
    best = int(dice.argmax())
    return {"best_dice": float(dice[best]), "best_dice_threshold": float(edges[best])}


def dice_at(values: torch.Tensor, truths: torch.Tensor, threshold: float) -> float:
    predicted = values >= threshold
    return float(2 * (predicted & truths).sum() / (predicted.sum() + truths.sum()).clamp_min(1))
