"""Where is this brain unusual: likelihood maps, completions and anomaly maps from the prior.

* :func:`code_nll_bits`: the prior is causal, so one full pass over a code map gives every code's
  conditional probability; ``-log2 p`` per code is the likelihood map (bits).
* :func:`complete`: keep the codes of the first rows of a real slice and draw the rest from the
  prior (ordinary ancestral sampling started from a prefix, with the fast sampler).
* :func:`heal`: the anomaly method of Pinaya et al. 2022 ("Unsupervised brain imaging 3D anomaly
  detection and segmentation with transformers", Medical Image Analysis; and their 2021 VQ-VAE +
  transformer work): codes whose probability under the prior falls below a threshold (a low
  quantile of the per-code probabilities on healthy validate slices, stored with the run) are
  redrawn from the prior given the codes kept, the "healed" map is decoded, and the anomaly map
  is the absolute residual between input and healed image, masked to the (upsampled) redrawn
  region and smoothed. The baseline is the plain VQ-VAE reconstruction residual.

A raster-order prior sees only the codes above and to the left: a lesion's *first* rows are
judged with no knowledge of what lies below them, so the top edge of an anomaly is where the
prior is least informed; codes below an anomaly are judged given the anomalous codes above,
which can make them look likely (the anomaly "explains itself"). Pinaya et al. average several
orderings to soften this; brainvq uses the one raster order (see the README).

Two-level runs: likelihood maps are given for both levels (the bottom prior conditioned on the
image's own top map); completion draws the top map's missing rows with the top prior, then the
bottom map's with the bottom prior; healing redraws unlikely *bottom* codes given the image's
top map (the top map, 4-16x coarser, is kept).
"""

from brainvq.anomaly.detection import detect, examples_figure, overlay, prepare_out, run_threshold, score_images
from brainvq.anomaly.inputs import Inputs, open_inputs
from brainvq.anomaly.likelihood import Encoded, Healed, code_nll_bits, complete, decode, encode, top_nll_bits
from brainvq.anomaly.maps import gaussian_blur, heal, image_score, probability_threshold
from brainvq.anomaly.scoring import PixelScores, best_dice, dice_at, save_threshold

__all__ = [
    "Encoded",
    "Healed",
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
    "image_score",
    "open_inputs",
    "overlay",
    "prepare_out",
    "probability_threshold",
    "run_threshold",
    "save_threshold",
    "score_images",
    "top_nll_bits",
]
