"""Every section of a run's config as a typed dataclass, :class:`Config`'s defaults (the best measured), and
the checks of every value with a fixed set of choices or a range."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from brainvq.devices import ACCELERATORS, PRECISIONS
from brainvq.errors import ConfigError
from brainvq.models.settings import JudgeConfig, ModelConfig, PriorConfig

T = TypeVar("T")


@dataclass
class DataConfig:
    """Where the slices come from and how much of them to use."""

    root: str | None = None
    train_split: str = "train"
    val_split: str = "validate"
    limit_subjects: int | None = None
    limit_images: int | None = None
    val_limit_images: int | None = None
    in_memory: bool = True


@dataclass
class TrainConfig:
    """One training stage (used for both the VQ-VAE and the prior).

    Training stops at whichever of ``epochs``, ``max_steps`` and ``max_minutes`` comes first
    (set one to null to disable it). ``recon_loss``: ``mse``, ``l1`` or ``mse+ssim``.
    ``weight_ema_decay`` (0: off) keeps an exponential moving average of the weights (Polyak & Juditsky
    1992; as in most image generators since): validation, ``best`` and every later stage use the
    averaged weights, and a resume continues both; the first 1 / (1 - decay) steps are averaged
    evenly, so a short run is not held at its first weights. Not for the VQ-VAE, whose codebook is itself
    an EMA of the encoder's outputs. ``context_corruption`` (priors with a context: the bottom prior's top
    map, the stack prior's previous slice): during training, this share of the context's codes is replaced
    by codes from random positions of the same map, so the prior learns not to copy its context blindly.
    ``reversed_prior`` (``top_prior_train`` only): ``train-prior --level all`` and ``pipeline`` also train
    the reversed-order top prior (anomaly maps' second ordering; without it they fall back to ``top_z``,
    and ``train-prior --level top-reversed`` adds it later).
    """

    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    epochs: int | None = 20
    max_steps: int | None = None
    max_minutes: float | None = None
    recon_loss: str = "mse"
    ssim_weight: float = 1.0
    checkpoint_every_steps: int = 500
    snapshot_every_epochs: int = 1
    validate_every_epochs: int = 1
    val_batch_size: int = 64
    grad_clip: float | None = None
    weight_ema_decay: float = 0.0
    context_corruption: float = 0.0
    reversed_prior: bool = True
    seed: int = 0


@dataclass
class FabricConfig:
    """Devices, nodes, strategy and precision for Lightning Fabric.

    ``precision: auto`` resolves to ``bf16-mixed`` on CUDA and on CPUs with native bf16
    (avx512_bf16/AMX), else ``32-true``. ``channels_last`` speeds up the convolutions.
    """

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    channels_last: bool = True


@dataclass
class SampleConfig:
    """Ancestral sampling from the prior: ``temperature`` divides the logits, ``top_p`` below 1 draws
    each code from its nucleus only (Holtzman et al. 2020; :func:`brainvq.sampling.nucleus`). In a
    two-level run these set the bottom map; ``top_map_temperature`` and ``top_map_top_p`` set the
    top map, and follow ``temperature`` and ``top_p`` when None. ``top_map_background_check`` draws
    again the top maps that have no background around the head (:mod:`brainvq.sampling.background`).
    ``stacks`` above 0 (two-level runs): ``pipeline`` also trains the stack prior (``train-prior --level
    stack``, reading the previous slice's top map as ``top_prior.context_mode`` says) and draws this many
    whole stacks into ``RUN/samples/stacks`` (:mod:`brainvq.sampling.stacks`); ``stack_coupling``: how the
    bottom-map draws of a stack's slices go together (``none``, ``shared`` Gumbel noise, or ``chain``: each
    slice maximally coupled to the one before; each slice still an exact draw).
    ``stack_top_map_temperature``: the stack prior's temperature (None: ``top_map_temperature``'s; why 1.2:
    docs/experiments/2026-12-07-stack-chains.md);
    ``stack_guidance`` above 0: the stack prior's top maps are drawn from it times the independent top
    prior to this power, which pulls each slice toward what its index looks like (and every stack toward
    one typical brain); ``stack_candidates`` above 1: each slice's top map is chosen among this many draws from
    the stack prior by the independent top prior: the likeliest at the slice's index k, or with
    ``stack_rivals`` (index offsets) the one whose index k is likeliest against k + each offset;
    ``stack_first_map``:
    ``top`` draws slice 0's top map with the independent top prior as a single slice's, ``stack`` with
    the stack prior given "no previous slice"."""

    n: int = 16
    batch_size: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_map_temperature: float | None = None
    top_map_top_p: float | None = None
    top_map_background_check: bool = True
    sampler: str = "fast"
    seed: int = 0
    stacks: int = 0
    stack_coupling: str = "shared"
    stack_top_map_temperature: float | None = 1.2
    stack_guidance: float = 0.5
    stack_candidates: int = 4
    stack_first_map: str = "top"
    stack_rivals: list[int] = field(default_factory=lambda: [-4, -2, 2, 4])


@dataclass
class Config:
    """Everything a run needs; saved resolved into the run directory and every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(
            levels=2, top_downsample=4, bottom_dropout=0.5, bottom_dropout_weight=0.1
        )
    )  # a 16x16 top map that the decoder must use (README, "Two levels"); ModelConfig() alone is one level
    prior: PriorConfig = field(
        default_factory=lambda: PriorConfig(
            num_layers=4, input_kernel_size=3, condition_on_slice=True, positional=True
        )
    )  # the bottom prior, conditioned on the top map; PriorConfig() alone is the seed's 2-block PixelCNN
    train: TrainConfig = field(default_factory=TrainConfig)
    prior_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(batch_size=8, lr=2e-3, weight_ema_decay=0.995)
    )  # batch 8 learns most per minute on a 2-core CPU (2.02 bits in 20 min against 2.87 at batch 32);
    # the average of the weights: samples' tissue error 0.0043 at two seeds of the priors (README)
    top_prior: PriorConfig = field(
        default_factory=lambda: PriorConfig(
            arch="transformer",
            hidden_channels=192,
            num_layers=4,
            num_heads=6,
            dropout=0.1,
            condition_on_slice=True,
        )
    )
    top_prior_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            batch_size=8, lr=5e-4, warmup_steps=50, weight_ema_decay=0.995, context_corruption=0.25
        )
    )  # the average of the weights: samples' tissue error 0.0043 against 0.0053 (README, "Two levels")
    fabric: FabricConfig = field(default_factory=FabricConfig)
    sample: SampleConfig = field(
        default_factory=lambda: SampleConfig(top_p=0.7, top_map_top_p=1.0, top_map_temperature=1.15)
    )  # the bottom map from its nucleus of 0.7, the top map from the full distribution at temperature 1.15
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # a step budget, not minutes: the same judge (and hash) whatever the machine's speed that day
    judge_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(batch_size=16, lr=1e-3, epochs=None, max_steps=635, val_batch_size=32)
    )

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML- and checkpoint-safe)."""
        return asdict(self)

    def validate(self) -> Config:
        """Check every value with a fixed set of choices or a range; ConfigError names the key."""
        choices = {
            "model.quantizer": (self.model.quantizer, ("ema", "loss")),
            "model.codebook_init": (self.model.codebook_init, ("kmeans++", "data", "uniform")),
            "model.output": (self.model.output, ("clamp", "sigmoid")),
            "model.downsample": (self.model.downsample, (4, 8)),
            "prior.arch": (self.prior.arch, ("pixelcnn", "gated", "transformer")),
            "top_prior.arch": (self.top_prior.arch, ("pixelcnn", "gated", "transformer")),
            "model.levels": (self.model.levels, (1, 2)),
            "model.top_downsample": (self.model.top_downsample, (2, 4)),
            "sample.sampler": (self.sample.sampler, ("fast", "naive")),
            "sample.stack_coupling": (self.sample.stack_coupling, ("none", "shared", "chain")),
            "sample.stack_first_map": (self.sample.stack_first_map, ("top", "stack")),
            "top_prior.context_mode": (self.top_prior.context_mode, ("aligned", "prefix")),
            "fabric.accelerator": (self.fabric.accelerator, ACCELERATORS),
            "fabric.precision": (self.fabric.precision, PRECISIONS),
        }
        for section in ("train", "prior_train", "top_prior_train", "judge_train"):
            stage: TrainConfig = getattr(self, section)
            choices[f"{section}.schedule"] = (stage.schedule, ("constant", "cosine"))
            choices[f"{section}.recon_loss"] = (stage.recon_loss, ("mse", "l1", "mse+ssim"))
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, allowed))}")
        positive = {
            "prior.input_kernel_size": self.prior.input_kernel_size,
            "prior.kernel_size": self.prior.kernel_size,
            "prior.num_layers": self.prior.num_layers,
            "prior.num_slices": self.prior.num_slices,
            "model.num_embeddings": self.model.num_embeddings,
            "model.top_num_embeddings": self.model.top_num_embeddings,
            "top_prior.num_layers": self.top_prior.num_layers,
            "top_prior.num_heads": self.top_prior.num_heads,
            "model.embedding_dim": self.model.embedding_dim,
            "model.hidden_channels": self.model.hidden_channels,
            "judge.base_channels": self.judge.base_channels,
            "judge.depth": self.judge.depth,
            "model.bottom_dropout_weight": self.model.bottom_dropout_weight,
        }
        for section in ("train", "prior_train", "top_prior_train", "judge_train"):
            stage = getattr(self, section)
            for name in ("batch_size", "val_batch_size", "checkpoint_every_steps"):
                positive[f"{section}.{name}"] = getattr(stage, name)
            for name in ("epochs", "max_steps", "max_minutes"):
                if getattr(stage, name) is not None:
                    positive[f"{section}.{name}"] = getattr(stage, name)
        if self.sample.stack_guidance < 0:
            raise ConfigError(
                f"config key 'sample.stack_guidance': must be 0 or more, got {self.sample.stack_guidance}"
            )
        if self.sample.stack_candidates < 1:
            raise ConfigError(
                f"config key 'sample.stack_candidates': must be 1 or more, got {self.sample.stack_candidates}"
            )
        slices = self.top_prior.context_slices
        if not slices or min(slices) < 0 or (len(slices) > 1 and self.top_prior.context_mode != "aligned"):
            raise ConfigError(
                f"config key 'top_prior.context_slices': one or more of 0 (the first slice) and n > 0 (slice k-n), "
                f"more than one only with top_prior.context_mode aligned; got {slices}"
            )
        if self.sample.stacks < 0:
            raise ConfigError(f"config key 'sample.stacks': must be 0 or more, got {self.sample.stacks}")
        for section in ("prior_train", "top_prior_train", "judge_train"):
            corruption = getattr(self, section).context_corruption
            if not 0 <= corruption < 1:
                raise ConfigError(
                    f"config key '{section}.context_corruption': must be in [0, 1), got {corruption}"
                )
            decay = getattr(self, section).weight_ema_decay
            if not 0.0 <= decay < 1.0:
                raise ConfigError(f"config key '{section}.weight_ema_decay': must be in [0, 1), got {decay}")
        if self.train.weight_ema_decay:
            raise ConfigError(
                "config key 'train.weight_ema_decay': the VQ-VAE's codebook is already an average of the "
                "encoder's outputs; weight averaging is for the priors and the judge (keep it 0)"
            )
        for key in ("bottom_dropout", "bottom_corruption"):
            if not 0.0 <= getattr(self.model, key) < 1.0:
                raise ConfigError(
                    f"config key 'model.{key}': must be at least 0 and below 1, got {getattr(self.model, key)}"
                )
        for key, number in positive.items():
            if number <= 0:
                raise ConfigError(f"config key '{key}': must be positive, got {number}")
        for key in ("prior.input_kernel_size", "prior.kernel_size"):
            if positive[key] % 2 == 0:
                raise ConfigError(
                    f"config key '{key}': must be odd (a masked kernel has a centre), got {positive[key]}"
                )
        for section in ("prior", "top_prior"):
            prior: PriorConfig = getattr(self, section)
            if prior.arch == "transformer" and prior.hidden_channels % prior.num_heads:
                raise ConfigError(
                    f"config key '{section}.hidden_channels': {prior.hidden_channels} is not divisible by "
                    f"{section}.num_heads={prior.num_heads}"
                )
            if not 0 <= prior.dropout < 1:
                raise ConfigError(f"config key '{section}.dropout': must be in [0, 1), got {prior.dropout}")
        for name in ("temperature", "top_p", "top_map_temperature", "top_map_top_p", "stack_top_map_temperature"):
            problem = sampling_problem(name, getattr(self.sample, name))
            if problem:
                raise ConfigError(f"config key 'sample.{name}': {problem}")
        return self


def sampling_problem(name: str, value: float | None) -> str | None:
    """What is wrong with a sampling setting, or None: a temperature (``temperature``,
    ``top_map_temperature``) must be at least 0, a nucleus (``top_p``, ``top_map_top_p``) in (0, 1].
    Checked for configs and for values given to a draw alike."""
    if value is None:
        return None
    if name.endswith("top_p"):
        return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"
    return None if value >= 0 else f"must be >= 0, got {value}"
