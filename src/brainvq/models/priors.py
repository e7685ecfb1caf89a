"""Choosing a prior by name: the PixelCNN, the gated PixelCNN or the transformer."""

from __future__ import annotations

from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNN
from brainvq.models.settings import PriorConfig
from brainvq.models.transformer import TransformerPrior

Prior = PixelCNN | GatedPixelCNN | TransformerPrior


def build_prior(config: PriorConfig, num_embeddings: int) -> Prior:
    """The prior named by ``config.arch`` (``pixelcnn``, ``gated`` or ``transformer``)."""
    if config.arch == "pixelcnn":
        return PixelCNN(config, num_embeddings)
    if config.arch == "gated":
        return GatedPixelCNN(config, num_embeddings)
    if config.arch == "transformer":
        return TransformerPrior(config, num_embeddings)
    raise ValueError(f"prior.arch must be 'pixelcnn', 'gated' or 'transformer', got {config.arch!r}")
