"""Shared fixtures: a small phantom dataset and tiny configs, so tests run anywhere in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from brainvq.config import Config, load_config
from brainvq.data.phantom import make_phantom

# At most 2 threads; fewer when OMP_NUM_THREADS says so (e.g. while a long run shares the CPU:
# oversubscribed OpenMP threads slow small kernels down by orders of magnitude). Under pytest-xdist
# (`make test` runs a worker per core) each worker gets its share of the cores, and so do the
# commands it starts (they inherit OMP_NUM_THREADS).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
_THREADS = max(1, min(2, int(os.environ.get("OMP_NUM_THREADS", 0)) or (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(_THREADS)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CPU precision probe's cache (and any other) goes to a folder of the test session, never
    the user's ~/.cache; processes the tests start inherit it."""
    os.environ["BRAINVQ_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 subjects (4 train, 1 validate, 1 test) of 32 slices at 64x64."""
    root = tmp_path_factory.mktemp("phantom")
    make_phantom(root, num_subjects=6, seed=3, size=64)
    return root


TINY = [
    "model.hidden_channels=16",
    "model.residual_hidden_channels=8",
    "model.embedding_dim=8",
    "model.num_embeddings=32",
    "model.dead_code_steps=5",
    "train.batch_size=8",
    "train.lr=0.001",
    "train.val_batch_size=32",
    "fabric.precision=32-true",
    "fabric.accelerator=cpu",
    "prior.embedding_dim=8",
    "prior.hidden_channels=16",
    "prior.num_layers=2",
    "prior.condition_on_slice=false",
    "prior.positional=false",
    "prior_train.batch_size=16",
    "prior_train.val_batch_size=32",
    # one level, as the building blocks' defaults are; a test that wants two levels says so (and gets
    # these two-level settings to start from rather than the OASIS recipe's 16x16 top map and dropout)
    "model.levels=1",
    "model.top_downsample=2",
    "model.bottom_dropout=0.0",
    "model.bottom_dropout_weight=1.0",
    "prior.input_kernel_size=7",
    "top_prior_train.warmup_steps=0",
    "sample.top_p=1.0",
    "sample.top_map_top_p=null",
    "sample.top_map_temperature=null",
]


@pytest.fixture
def tiny_config(phantom_root: Path) -> Config:
    return load_config(None, [f"data.root={phantom_root}", *TINY])


def oasis_root() -> Path | None:
    """``$BRAINVQ_OASIS`` or ``../shared/oasis`` beside the checkout, when present."""
    candidates = [os.environ.get("BRAINVQ_OASIS"), Path(__file__).resolve().parents[2] / "shared" / "oasis"]
    for candidate in candidates:
        if candidate and Path(candidate, "keras_png_slices_train").is_dir():
            return Path(candidate)
    return None


JUDGE_SETS = [
    "judge.base_channels=8",
    "judge.depth=4",
    "judge_train.batch_size=8",
    "judge_train.lr=0.003",
    "judge_train.max_minutes=null",
    "judge_train.max_steps=250",
    "fabric.precision=32-true",
    "fabric.accelerator=cpu",
]


@pytest.fixture(scope="session")
def judge_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 phantom subjects at 64x64: 10 train, 2 validate, 2 test."""
    root = tmp_path_factory.mktemp("judge_phantom")
    make_phantom(root, num_subjects=14, seed=11, size=64)
    return root


@pytest.fixture(scope="session")
def trained_judge(judge_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("judge") / "judge"
    from brainvq.evaluation.judge import train_judge

    config = load_config(None, [f"data.root={judge_data}", *JUDGE_SETS])
    train_judge(config, out, progress=False)
    return out


@pytest.fixture(scope="session")
def finished_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole pipeline on the phantom with tiny one-level models (tests that change it work on a copy)."""
    from brainvq.pipeline import run_pipeline

    run = tmp_path_factory.mktemp("pipeline") / "run"
    config = load_config(
        None,
        [
            f"data.root={phantom_root}",
            *TINY,
            "train.max_steps=30",
            "prior_train.max_steps=20",
            "prior.arch=gated",
            "prior.condition_on_slice=true",
            "prior.positional=true",
            "sample.batch_size=4",
        ],
    )
    run_pipeline(config, run, progress=False, samples=4, device="cpu", log=lambda *_: None)
    return run


TWO_LEVELS = [
    *TINY,
    "model.levels=2",
    "model.top_downsample=2",
    "model.top_num_embeddings=16",
    "prior.condition_on_slice=true",
    "prior.positional=true",
    "prior.context_channels=8",
    "top_prior.hidden_channels=32",
    "top_prior.num_layers=2",
    "top_prior.num_heads=4",
    "top_prior_train.batch_size=16",
    "top_prior_train.val_batch_size=32",
]


def _sets() -> list[str]:
    return [part for item in TWO_LEVELS for part in ("--set", item)]


@pytest.fixture(scope="session")
def two_level_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny two-level run trained through the CLI on the phantom (tests that change it work on a copy)."""
    from tests.training.test_resume_cli import brainvq as cli

    run = tmp_path_factory.mktemp("two") / "run"
    data = ["--data", str(phantom_root)]
    steps = [
        ["train-vqvae", *data, "--run", str(run), *_sets(), "--max-steps", "25", "--quiet"],
        ["encode", "--run", str(run), *data],
        ["train-prior", "--run", str(run), *_sets(), "--max-steps", "15", "--quiet"],
    ]
    for step in steps:
        result = cli(*step)
        assert result.returncode == 0, (step[0], result.stderr[-2000:])
    return run
