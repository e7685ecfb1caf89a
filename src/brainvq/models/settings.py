"""The networks' hyperparameters: what a model is built from, and all it is built from.

These dataclasses belong to the models; the application's :class:`brainvq.config.Config` holds them as
its ``model``, ``prior``/``top_prior`` and ``judge`` sections (and so the models never import the
application's config).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """VQ-VAE architecture and quantiser (van den Oord et al. 2017, "Neural Discrete Representation Learning").

    ``quantizer``: ``ema`` (EMA codebook updates, Razavi et al. 2019) or ``loss`` (the seed's
    codebook-loss variant). ``codebook_init``: ``kmeans++`` (k-means++ seeding on the first batch's encoder outputs),
    ``data`` (random encoder outputs of the first batch) or ``uniform`` (the seed's). ``dead_code_steps``: restart a code unused for that
    many training steps (0 disables). ``output``: ``clamp`` (linear decoder, clamped to [0, 1] for
    images and metrics) or ``sigmoid``.

    ``levels: 2`` adds a top code map (VQ-VAE-2, Razavi et al. 2019, "Generating Diverse
    High-Fidelity Images with VQ-VAE-2") ``top_downsample`` times coarser than the bottom map, with
    its own codebook of ``top_num_embeddings`` codes and the same quantiser settings.
    ``bottom_dropout``: the fraction of training images whose decoder sees the top codes alone (the
    bottom vectors zeroed), so that the top map must carry the image's structure; without it the
    decoder can read everything from the bottom map and ignore the top one (the failure Jukebox,
    Dhariwal et al. 2020, sec. 3, avoids with separate decoders per level).
    ``bottom_dropout_weight``: the weight of those images in the reconstruction loss (the others
    weigh 1). A top-only reconstruction's squared error is about six times a full one's on OASIS,
    so at 1 the dropped images take most of the decoder's gradient; a smaller weight gives it back
    to the full reconstructions that validation measures.
    ``bottom_corruption``: the fraction of bottom codes that the decoder sees swapped for random
    codes in training, so that it learns to overrule codes that disagree with the top map and their
    neighbours, as a sampled bottom map's mistakes do (token noise, as in denoising autoencoders,
    Vincent et al. 2008).
    """

    in_channels: int = 1
    hidden_channels: int = 128
    residual_hidden_channels: int = 32
    num_residual_blocks: int = 2
    embedding_dim: int = 64
    num_embeddings: int = 512
    downsample: int = 4
    output: str = "clamp"
    quantizer: str = "ema"
    commitment_cost: float = 0.25
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    codebook_init: str = "kmeans++"
    dead_code_steps: int = 100
    levels: int = 1
    top_downsample: int = 2
    top_num_embeddings: int = 512
    bottom_dropout: float = 0.0
    bottom_dropout_weight: float = 1.0
    bottom_corruption: float = 0.0


@dataclass
class PriorConfig:
    """PixelCNN prior over code maps (van den Oord et al. 2016, "Pixel Recurrent Neural Networks" /
    "Conditional Image Generation with PixelCNN Decoders").

    ``arch``: ``pixelcnn`` (the seed: 7x7 mask-A conv, residual blocks of 1x1 -> 3x3 mask-B -> 1x1)
    or ``gated`` (vertical and horizontal stacks with gated activations, no blind spot).
    ``condition_on_slice``: learn a conditional bias from the slice index (0..num_slices-1).
    ``positional``: add a learned embedding of each code position to the input, so the prior knows
    where in the slice it is (``code_height``/``code_width`` are filled in by train-prior).

    ``transformer``: a GPT-style decoder over the map in raster order (``num_layers`` pre-norm
    blocks of width ``hidden_channels`` with ``num_heads`` heads and ``dropout``; learned positions;
    the slice index as the start token). Used for the top map of two-level runs.

    In a two-level run the bottom prior is conditioned on the top map: train-prior fills in
    ``context_num_embeddings`` (the top codebook size) and ``context_factor`` (how much finer the
    bottom grid is); ``context_channels`` is the width of the conditioning stack.

    The stack prior (a transformer over the top map of slice k, conditioned on slice k-1's top map,
    ``train-prior --level stack``) gets ``context_num_embeddings`` = the top codebook size + 1 (the
    last code stands for "no previous slice") and reads the previous map as ``context_mode``:
    ``aligned`` (each position adds the 3x3 neighbourhood of the previous map at that place) or
    ``prefix`` (the previous map's codes come first in the sequence, fully visible to every position).
    ``context_slices``: which slices' maps it reads, each with its own code embeddings: n above 0 is
    slice k-n, 0 the stack's first slice (the subject); more than one needs ``aligned``.
    """

    arch: str = "pixelcnn"
    embedding_dim: int = 64
    hidden_channels: int = 128
    num_layers: int = 2
    input_kernel_size: int = 7
    kernel_size: int = 3
    condition_on_slice: bool = False
    num_slices: int = 32
    positional: bool = False
    code_height: int | None = None
    code_width: int | None = None
    num_heads: int = 8
    dropout: float = 0.0
    context_channels: int = 64
    context_num_embeddings: int | None = None
    context_factor: int = 1
    context_mode: str = "aligned"
    context_slices: list[int] = field(default_factory=lambda: [1])


@dataclass
class JudgeConfig:
    """The judge (``brainvq train-judge``): a U-Net that segments tissue and predicts the slice index.

    ``depth`` levels of ``base_channels * 2**level`` channels; the slice head's loss is weighted by
    ``slice_weight`` against the segmentation's cross-entropy.
    """

    base_channels: int = 16
    depth: int = 5
    num_slices: int = 32
    slice_weight: float = 0.5
