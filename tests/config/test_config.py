from dataclasses import replace
from pathlib import Path

import pytest

from brainvq.config import Config, apply_overrides, config_from_dict, find_preset, load_config, save_config
from brainvq.errors import ConfigError


def test_defaults_are_the_best_measured_and_seed_yaml_keeps_the_seed_design() -> None:
    from dataclasses import replace

    from brainvq.config import PriorConfig, find_preset, load_config

    config = Config()  # the best measured on OASIS: two levels, oasis-cpu's (README, "Two levels")
    assert config.model.levels == 2 and config.model.top_downsample == 4 and config.model.bottom_dropout == 0.5
    assert config.model.num_residual_blocks == 2 and config.model.downsample == 4
    assert config.top_prior.arch == "transformer" and config.prior.arch == "pixelcnn"
    assert config.prior.condition_on_slice and config.prior.positional
    sampling = config.sample  # the bottom map from its nucleus, the top map warmer (README, "at temperature 1.15")
    assert (sampling.top_p, sampling.top_map_top_p, sampling.top_map_temperature) == (0.7, 1.0, 1.15)
    # the oasis-cpu preset is the defaults' architecture and sampling with a CPU hour's budgets
    preset = load_config(find_preset("oasis-cpu"))
    for section in ("model", "prior", "top_prior", "sample"):
        assert getattr(preset, section) == getattr(config, section), section
    for section in ("train", "prior_train", "top_prior_train"):
        budget = replace(getattr(preset, section), max_minutes=None, max_steps=None)
        assert budget == replace(getattr(config, section), max_minutes=None, max_steps=None), section
    # its budgets are steps (the same model whatever the machine's speed), the measured run's
    budgets = [
        (getattr(preset, s).max_steps, getattr(preset, s).max_minutes)
        for s in ("train", "top_prior_train", "prior_train")
    ]
    assert budgets == [(1742, None), (1179, None), (2868, None)]
    seed = load_config(find_preset("seed"))
    assert seed.prior == PriorConfig() and seed.prior.num_layers == 2 and not seed.prior.condition_on_slice
    assert seed.model.levels == 1 and seed.model.num_embeddings == 512 and seed.model.embedding_dim == 64
    assert (seed.model.quantizer, seed.model.codebook_init) == ("ema", "kmeans++")  # brainvq's quantiser
    assert (seed.sample.top_p, seed.sample.top_map_top_p) == (1.0, None)  # plain ancestral sampling
    # both priors sample from the average of their weights; the seed, the demo and one level do not
    assert config.prior_train.weight_ema_decay == config.top_prior_train.weight_ema_decay == 0.995
    for name in ("seed", "demo", "oasis-cpu-1level"):
        assert load_config(find_preset(name)).prior_train.weight_ema_decay == 0.0, name


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
    for name in ("demo", "oasis-cpu", "oasis-cpu-1level", "oasis-cpu-stacks", "oasis-gpu", "seed"):
        config = load_config(find_preset(name))
        assert isinstance(config, Config)
    for name in ("oasis-cpu", "oasis-gpu"):  # two levels won (README, "Two levels")
        two_levels = load_config(find_preset(name))
        assert two_levels.model.levels == 2 and two_levels.model.bottom_dropout == 0.5
        assert two_levels.model.bottom_dropout_weight == 0.1
        assert (two_levels.sample.top_p, two_levels.sample.top_map_top_p) == (0.7, 1.0)  # a nucleus: bottom only
    stacks, cpu = load_config(find_preset("oasis-cpu-stacks")), load_config(find_preset("oasis-cpu"))
    assert stacks.sample.stacks == 4 and stacks.top_prior.context_mode == "aligned"  # measured: docs/experiments
    assert not stacks.top_prior_train.reversed_prior  # the anomaly maps' second top prior: not for stacks
    untrimmed = replace(stacks.top_prior_train, reversed_prior=True)
    # otherwise oasis-cpu: the same models and budgets
    assert replace(stacks, sample=cpu.sample, top_prior_train=untrimmed) == cpu
    for name in ("oasis-cpu-1level", "demo"):  # one level samples without a nucleus
        one_level = load_config(find_preset(name))
        assert one_level.model.levels == 1 and one_level.sample.top_p == 1.0
    one_level = load_config(find_preset("oasis-cpu-1level"))
    assert (one_level.prior.num_layers, one_level.prior.input_kernel_size) == (8, 7)
    with pytest.raises(ConfigError, match="preset 'nope' not found .presets: demo, oasis-cpu, oasis-cpu-1level"):
        find_preset("nope")


def test_partial_sections_keep_the_full_defaults(tmp_path: Path) -> None:
    """A partial section changes only what it names: every other key keeps Config()'s value, not the
    section dataclass's own default (which differ for the priors' training, sampling and the model)."""
    defaults = Config()
    config = config_from_dict(
        {"prior_train": {"max_minutes": 10}, "sample": {"n": 64}, "model": {"num_embeddings": 256}}
    )
    assert config.prior_train.max_minutes == 10
    assert (config.prior_train.batch_size, config.prior_train.lr, config.prior_train.weight_ema_decay) == (
        8,
        2e-3,
        0.995,
    )
    assert config.sample.n == 64
    assert (config.sample.top_p, config.sample.top_map_temperature) == (defaults.sample.top_p, 1.15)
    assert config.model.num_embeddings == 256 and config.model.levels == 2 and config.model.bottom_dropout == 0.5
    path = tmp_path / "partial.yaml"
    path.write_text("prior_train:\n  max_minutes: 10\n")
    from_file = load_config(path, ["sample.n=64"])
    assert from_file.prior_train == config.prior_train and from_file.sample == config.sample
    with pytest.raises(ConfigError, match="config section 'model' must be a mapping"):
        config_from_dict({"model": 5})


def test_presets_ship_with_the_package_and_ignore_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A preset name is looked up in the package only; a configs/demo.yaml in the working folder
    does not replace the shipped one, and is used only when given as a path."""
    import brainvq

    shipped = find_preset("demo")
    assert Path(brainvq.__file__).parent in shipped.parents
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("model:\n  num_embeddings: 7\n")
    monkeypatch.chdir(tmp_path)
    assert find_preset("demo") == shipped
    assert load_config(find_preset("demo")).model.num_embeddings == 128
    assert load_config(find_preset("configs/demo.yaml")).model.num_embeddings == 7
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        find_preset("missing.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prior.arch=foo", "config key 'prior.arch': 'foo' is not one of pixelcnn, gated"),
        ("model.quantizer=foo", "config key 'model.quantizer'"),
        ("model.output=foo", "config key 'model.output'"),
        ("train.schedule=foo", "config key 'train.schedule'"),
        ("train.recon_loss=foo", "config key 'train.recon_loss'"),
        ("prior.kernel_size=4", "must be odd"),
        ("train.checkpoint_every_steps=0", "must be positive"),
        ("model.bottom_dropout=1.0", "must be at least 0 and below 1"),
        ("model.bottom_corruption=-0.1", "must be at least 0 and below 1"),
        ("model.bottom_dropout_weight=0", "config key 'model.bottom_dropout_weight': must be positive"),
        ("fabric.accelerator=tpu", "config key 'fabric.accelerator'"),
        ("sample.top_map_top_p=1.5", "config key 'sample.top_map_top_p': must be in (0, 1]"),
        ("sample.top_map_temperature=-1", "config key 'sample.top_map_temperature': must be >= 0"),
        ("sample.stack_candidates=0", "config key 'sample.stack_candidates': must be 1 or more, got 0"),
        ("sample.stack_rivals=3", "config key 'sample.stack_rivals': expected a list, got 3"),
        ("sample.stack_rivals=[-2, x]", "config key 'sample.stack_rivals': expected int, got 'x'"),
        (
            "sample.stack_first_map=middle",
            "config key 'sample.stack_first_map': 'middle' is not one of top, stack",
        ),
    ],
)
def test_bad_values_are_one_line_errors_when_the_config_is_built(
    override: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 9.15: validated once, when built (a Python user gets the ConfigError too)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(Config(), [override])
    from brainvq.cli import main

    code = main(["train-vqvae", "--data", str(tmp_path), "--run", str(tmp_path / "run"), "--set", override])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()


def test_cuda_without_a_gpu_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from brainvq.cli import main
    from brainvq.data.phantom import make_phantom

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    make_phantom(tmp_path / "data", 3, size=32, num_slices=2)
    for accelerator in ("cuda", "gpu"):
        code = main(["train-vqvae", "--data", str(tmp_path / "data"), "--run", str(tmp_path / "run"),
                     "--set", f"fabric.accelerator={accelerator}"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and "no CUDA device is visible" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_gpu_is_an_alias_of_cuda_and_auto_precision_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from brainvq.devices import inference_precision, resolve_accelerator, resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_accelerator("gpu") == resolve_accelerator("auto") == "cuda"
    assert resolve_precision("auto", resolve_accelerator("gpu")) == "bf16-mixed"  # issue 9.10: not fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") == "16-mixed"
    # evaluation follows the device it runs on, not the precision the run trained at
    assert inference_precision(torch.device("cpu")) == resolve_precision("auto", "cpu")
    assert inference_precision(torch.device("cpu")) != "16-mixed"
    assert inference_precision(torch.device("cpu"), "32-true") == "32-true"


def test_string_keys_keep_their_text() -> None:
    config = apply_overrides(Config(), ["data.root=2024", "data.val_split=yes", "data.train_split=on"])
    assert (config.data.root, config.data.val_split, config.data.train_split) == ("2024", "yes", "on")
    assert apply_overrides(Config(), ["data.root=null"]).data.root is None


def test_retired_keys_in_old_checkpoints_still_load() -> None:
    old = Config().to_dict()
    old["data"]["num_workers"] = 0
    old["fabric"]["compile"] = False
    assert config_from_dict(old) == Config()


def test_weight_averaging_is_checked_and_kept_off_the_vqvae() -> None:
    assert load_config(None, ["prior_train.weight_ema_decay=0.995"]).prior_train.weight_ema_decay == 0.995
    with pytest.raises(ConfigError, match="top_prior_train.weight_ema_decay': must be in"):
        load_config(None, ["top_prior_train.weight_ema_decay=1"])
    with pytest.raises(ConfigError, match="train.weight_ema_decay': the VQ-VAE's codebook"):
        load_config(None, ["train.weight_ema_decay=0.9"])
