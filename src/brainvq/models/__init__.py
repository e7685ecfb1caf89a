"""Neural networks: the VQ-VAEs (one or two levels), the quantiser, and the priors (PixelCNN, gated
PixelCNN, transformer)."""

from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNN, build_prior
from brainvq.models.quantizer import QuantizerOutput, VectorQuantizer
from brainvq.models.transformer import TransformerPrior
from brainvq.models.vqvae import VQVAE, TwoLevelCodes, TwoLevelVQVAE, VQVAEOutput, build_vqvae

__all__ = [
    "VQVAE",
    "GatedPixelCNN",
    "PixelCNN",
    "QuantizerOutput",
    "TransformerPrior",
    "TwoLevelCodes",
    "TwoLevelVQVAE",
    "VQVAEOutput",
    "VectorQuantizer",
    "build_prior",
    "build_vqvae",
]
