"""Where is this brain unusual: likelihood maps, completions and anomaly maps from the prior.

* :func:`code_nll_bits`: the prior is causal, so one full pass over a code map gives every code's
  conditional probability; ``-log2 p`` per code is the likelihood map (bits).
* :func:`complete`: keep the codes of the first rows of a real slice and draw the rest from the
  prior (ordinary ancestral sampling started from a prefix, with the fast sampler).
* :mod:`brainvq.anomaly.methods`: the anomaly maps by name. The default, ``top_z_both_orders_max``,
  scores each top-map code by its NLL's z-score against healthy brains at that position and slice
  (:mod:`.reference`), in both raster orders (a reversed-order top prior), taking the larger; the
  others include the healed residual of Pinaya et al. 2022 (unlikely codes redrawn several times) and
  the two baselines, the VQ-VAE residual and the intensity's distance from healthy intensities.
  Thresholds are chosen on healthy validate slices (:mod:`.operating`).

Two-level runs: likelihood maps are given for both levels (the bottom prior conditioned on the
image's own top map); completion draws the top map's missing rows with the top prior, then the
bottom map's with the bottom prior; healing redraws unlikely *bottom* codes given the image's
top map (the top map, 4-16x coarser, is kept).
"""

from brainvq.anomaly.detection import detect, examples_figure, overlay, prepare_out, score_images
from brainvq.anomaly.inputs import Inputs, open_inputs
from brainvq.anomaly.likelihood import Encoded, Healed, code_nll_bits, complete, decode, encode, top_nll_bits
from brainvq.anomaly.maps import gaussian_blur, heal, image_score
from brainvq.anomaly.methods import DEFAULT_METHOD, METHODS, method_maps
from brainvq.anomaly.reference import HealthyReference, healthy_reference
from brainvq.anomaly.scoring import PixelScores, best_dice, dice_at

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "Encoded",
    "Healed",
    "HealthyReference",
    "Inputs",
    "PixelScores",
    "best_dice",
    "code_nll_bits",
    "complete",
    "decode",
    "detect",
    "dice_at",
    "encode",
    "examples_figure",
    "gaussian_blur",
    "heal",
    "healthy_reference",
    "image_score",
    "method_maps",
    "open_inputs",
    "overlay",
    "prepare_out",
    "score_images",
    "top_nll_bits",
]
