"""Neural networks: the VQ-VAE (encoder, quantiser, decoder) and the PixelCNN priors."""

from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNN, build_prior
from brainvq.models.quantizer import QuantizerOutput, VectorQuantizer
from brainvq.models.vqvae import VQVAE, VQVAEOutput

__all__ = [
    "VQVAE",
    "GatedPixelCNN",
    "PixelCNN",
    "QuantizerOutput",
    "VQVAEOutput",
    "VectorQuantizer",
    "build_prior",
]
