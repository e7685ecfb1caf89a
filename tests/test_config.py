from pathlib import Path

import pytest

from brainvq.config import Config, apply_overrides, config_from_dict, find_preset, load_config, save_config
from brainvq.errors import ConfigError


def test_defaults_match_the_seed_design() -> None:
    config = Config()
    assert config.model.num_residual_blocks == 2 and config.model.downsample == 4
    assert config.model.commitment_cost == 0.25
    assert config.prior.arch == "pixelcnn" and config.prior.input_kernel_size == 7
    assert config.prior.kernel_size == 3 and config.prior.num_layers == 2


def test_yaml_round_trip(tmp_path: Path) -> None:
    config = apply_overrides(Config(), ["model.num_embeddings=256", "train.max_minutes=1.5", "prior.arch=gated"])
    save_config(config, tmp_path / "c.yaml")
    loaded = load_config(tmp_path / "c.yaml")
    assert loaded == config
    assert loaded.model.num_embeddings == 256 and loaded.prior.arch == "gated"


def test_overrides_parse_types() -> None:
    config = apply_overrides(
        Config(), ["train.epochs=3", "train.lr=1e-3", "data.limit_subjects=null", "fabric.channels_last=false"]
    )
    assert config.train.epochs == 3 and config.train.lr == pytest.approx(1e-3)
    assert config.data.limit_subjects is None and config.fabric.channels_last is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.num_embedings=3", "unknown config key 'model.num_embedings'"),
        ("nosection.x=1", "unknown config key 'nosection.x'"),
        ("model.num_embeddings=many", "config key 'model.num_embeddings': expected int"),
        ("fabric.channels_last=3", "expected true/false"),
        ("model.num_embeddings", "must look like section.key=value"),
    ],
)
def test_bad_overrides_are_clear(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(Config(), [override])


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hidden_channels: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(path)
    path.write_text("model:\n  colour: red\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.colour'"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_presets_load() -> None:
    for name in ("demo", "oasis-cpu", "oasis-gpu"):
        config = load_config(find_preset(name))
        assert isinstance(config, Config)
    with pytest.raises(ConfigError, match="preset 'nope' not found"):
        find_preset("nope")


def test_partial_dict_keeps_defaults() -> None:
    config = config_from_dict({"model": {"num_embeddings": 64}})
    assert config.model.num_embeddings == 64 and config.model.embedding_dim == Config().model.embedding_dim
