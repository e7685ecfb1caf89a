"""Typed configuration: dataclasses for every stage, YAML loading, dotted CLI overrides.

The building blocks' own defaults (``ModelConfig()``, ``PriorConfig()``) are the seed design (a
VQ-VAE with two 4x4 stride-2 convolutions and two residual blocks, and a PixelCNN with a 7x7
mask-A convolution and two residual blocks) with the non-collapsing quantiser (EMA + k-means++
init + dead-code restart); the ``seed`` preset keeps that. A :class:`Config`'s defaults are the
best configuration measured so far on OASIS (see the README's results): two levels of codes
(VQ-VAE-2, Razavi et al. 2019) with a transformer prior over the top map and a PixelCNN over the
bottom map conditioned on it, the architecture and sampling of the ``oasis-cpu`` preset.

Every YAML file, checkpoint dict and ``--set`` is merged onto the full defaults of :class:`Config`:
a partial section (``prior_train: {max_minutes: 10}``) changes only the keys it names.

Files: ``schema`` (the dataclasses and their checks), ``files`` (YAML, overrides, presets).
"""

from brainvq.config.files import (
    apply_overrides,
    config_from_dict,
    find_preset,
    load_config,
    merge_dicts,
    preset_names,
    save_config,
)
from brainvq.config.schema import (
    Config,
    DataConfig,
    FabricConfig,
    JudgeConfig,
    ModelConfig,
    PriorConfig,
    SampleConfig,
    TrainConfig,
    sampling_problem,
)

__all__ = [
    "Config",
    "DataConfig",
    "FabricConfig",
    "JudgeConfig",
    "ModelConfig",
    "PriorConfig",
    "SampleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "find_preset",
    "load_config",
    "merge_dicts",
    "preset_names",
    "sampling_problem",
    "save_config",
]
