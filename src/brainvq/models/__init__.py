"""Neural networks: the VQ-VAEs (one or two levels), the quantiser, and the priors (PixelCNN, gated
PixelCNN, transformer)."""

from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNN
from brainvq.models.priors import Prior, build_prior
from brainvq.models.quantizer import QuantizerOutput, VectorQuantizer
from brainvq.models.settings import JudgeConfig, ModelConfig, PriorConfig
from brainvq.models.transformer import TransformerPrior
from brainvq.models.vqvae import VQVAE, Codes, TwoLevelVQVAE, VQVAEOutput, build_vqvae

__all__ = [
    "VQVAE",
    "Codes",
    "GatedPixelCNN",
    "JudgeConfig",
    "ModelConfig",
    "PixelCNN",
    "Prior",
    "PriorConfig",
    "QuantizerOutput",
    "TransformerPrior",
    "TwoLevelVQVAE",
    "VQVAEOutput",
    "VectorQuantizer",
    "build_prior",
    "build_vqvae",
]
