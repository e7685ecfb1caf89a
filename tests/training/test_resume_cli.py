"""Resume as a user runs it: separate `brainvq` processes, a non-default config given only once,
Ctrl-C, a time budget, and two DDP processes stopping together (issue 9, items 1, 2 and 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from brainvq.runs import RunDir, load_checkpoint
from tests.conftest import TINY


def brainvq(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh process, as a user would."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "brainvq.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _config_file(folder: Path, **train: object) -> Path:
    """A non-default config: tiny model, batch 4, lr 2e-3, 24 images (6 steps an epoch)."""
    data: dict[str, dict[str, object]] = {}
    for item in TINY:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        data.setdefault(section, {})[name] = yaml.safe_load(value)
    data["data"] = {"limit_images": 24, "val_limit_images": 8}
    data["train"].update({"batch_size": 4, "lr": 0.002, "checkpoint_every_steps": 5, "epochs": None, **train})
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(RunDir(run).checkpoint("vqvae", "last"))
    assert isinstance(state["model"], dict)
    return state["model"]


def _same_weights(a: Path, b: Path) -> list[str]:
    first, second = _weights(a), _weights(b)
    return [name for name, value in first.items() if not torch.equal(value, second[name])]


def _step(run: Path) -> int:
    return int(load_checkpoint(RunDir(run).checkpoint("vqvae", "last"))["loop"]["step"])


@pytest.mark.slow
def test_resume_without_flags_uses_the_runs_own_config(phantom_root: Path, tmp_path: Path) -> None:
    config = _config_file(tmp_path)
    base = ["train-vqvae", "--data", str(phantom_root), "--config", str(config), "--quiet"]
    assert brainvq(*base, "--run", str(tmp_path / "a"), "--max-steps", "8").returncode == 0
    assert brainvq(*base, "--run", str(tmp_path / "b"), "--max-steps", "3").returncode == 0
    # resume across the epoch boundary (6 steps an epoch) without repeating --config or --data
    resumed = brainvq("train-vqvae", "--run", str(tmp_path / "b"), "--resume", "--max-steps", "8", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming with the run's saved config; overridden: train.max_steps: 3 -> 8" in resumed.stderr
    assert _step(tmp_path / "b") == 8
    assert _same_weights(tmp_path / "a", tmp_path / "b") == []
    # a resumed run keeps its architecture
    changed = brainvq("train-vqvae", "--run", str(tmp_path / "b"), "--resume", "--set", "model.num_embeddings=64")
    assert changed.returncode == 2 and "cannot change the architecture" in changed.stderr


@pytest.mark.slow
def test_a_later_stage_keeps_the_runs_config(phantom_root: Path, tmp_path: Path) -> None:
    """`train-prior` (and `--force` with one `--set`) on a run made with a config file: the prior
    is built from the run's saved config, not the defaults, and only the named key changes."""
    config = _config_file(tmp_path, max_steps=2)
    saved = yaml.safe_load(config.read_text())
    saved["prior"].update({"num_layers": 1, "kernel_size": 5})
    saved["prior_train"] = {"batch_size": 4, "max_steps": 2, "epochs": None}
    config.write_text(yaml.safe_dump(saved))
    run = tmp_path / "run"
    made = brainvq(
        "train-vqvae", "--data", str(phantom_root), "--run", str(run), "--config", str(config), "--quiet"
    )
    assert made.returncode == 0, made.stderr
    assert brainvq("encode", "--run", str(run), "--data", str(phantom_root)).returncode == 0

    def prior_config() -> dict[str, dict[str, object]]:
        state = load_checkpoint(RunDir(run).checkpoint("prior", "last"))
        return state["config"]  # type: ignore[return-value]

    first = brainvq("train-prior", "--run", str(run), "--quiet")
    assert first.returncode == 0, first.stderr
    assert "starting from the run's saved config" in first.stderr
    assert prior_config()["prior"]["num_layers"] == 1 and prior_config()["prior"]["kernel_size"] == 5
    again = brainvq("train-prior", "--run", str(run), "--force", "--set", "prior_train.lr=0.004", "--quiet")
    assert again.returncode == 0, again.stderr
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["prior_train"]["lr"] == 0.004 and resolved["prior_train"]["max_steps"] == 2
    assert resolved["prior"]["num_layers"] == 1 and resolved["train"]["lr"] == 0.002
    assert prior_config()["prior_train"]["lr"] == 0.004 and prior_config()["prior"]["kernel_size"] == 5
    # `pipeline` on the run without --preset or --config goes on with the run's config, not oasis-cpu's
    went_on = brainvq("pipeline", "--data", str(phantom_root), "--run", str(run), "--samples", "2", "--quiet")
    assert went_on.returncode == 0, went_on.stderr
    assert (
        "[pipeline] starting from the run's saved config" in went_on.stderr
        and "--preset or --config" in went_on.stderr
    )
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["prior_train"]["lr"] == 0.004 and resolved["prior"]["num_layers"] == 1
    assert resolved["train"]["lr"] == 0.002 and resolved["model"]["hidden_channels"] == 16
    assert (run / "report.html").is_file()


@pytest.fixture(scope="module")
def straight_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A cosine-schedule run of 300 steps, straight through (the reference for interrupted ones)."""
    folder = tmp_path_factory.mktemp("straight")
    config = _config_file(folder, max_steps=300, schedule="cosine", warmup_steps=5)
    result = brainvq("train-vqvae", "--data", str(phantom_root), "--config", str(config), "--run",
                     str(folder / "run"), "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return config, folder / "run"


@pytest.mark.slow
def test_ctrl_c_stops_at_a_step_boundary_and_resumes_exactly(
    phantom_root: Path, tmp_path: Path, straight_run: tuple[Path, Path]
) -> None:
    config, reference = straight_run
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "brainvq.cli", "train-vqvae", "--data", str(phantom_root), "--config",
               str(config), "--run", str(run), "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    checkpoint = RunDir(run).checkpoint("vqvae", "last")
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    stopped_at = _step(run)
    assert 0 < stopped_at < 300
    resumed = brainvq("train-vqvae", "--run", str(run), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert _step(run) == 300
    assert _same_weights(reference, run) == []


@pytest.mark.slow
def test_time_budget_stop_then_a_larger_budget_continues_exactly(
    phantom_root: Path, tmp_path: Path, straight_run: tuple[Path, Path]
) -> None:
    config, reference = straight_run
    run = tmp_path / "run"
    first = brainvq("train-vqvae", "--data", str(phantom_root), "--config", str(config), "--run", str(run),
                    "--max-minutes", "0.02", "--quiet", "--json")  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["stop_reason"] == "0.02 minutes"
    stopped_at = _step(run)
    assert 0 < stopped_at < 300
    same_budget = brainvq("train-vqvae", "--run", str(run), "--resume", "--quiet", "--json")
    assert json.loads(same_budget.stdout)["steps"] == stopped_at  # the budget is spent: no extra step
    resumed = brainvq("train-vqvae", "--run", str(run), "--resume", "--max-minutes", "30", "--quiet", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["stop_reason"] == "300 steps"
    assert _same_weights(reference, run) == []


@pytest.mark.slow
def test_two_ddp_processes_stop_together_on_a_time_budget(phantom_root: Path, tmp_path: Path) -> None:
    # The launcher the README recommends: Fabric's own (--set fabric.strategy=ddp re-runs the command per rank).
    config = _config_file(tmp_path, max_steps=100000)
    run = tmp_path / "run"
    result = brainvq("train-vqvae", "--data", str(phantom_root), "--config", str(config), "--run", str(run),
                     "--set", "fabric.devices=2", "--set", "fabric.strategy=ddp", "--set", "fabric.accelerator=cpu",
                     "--max-minutes", "0.1", "--quiet", "--json", timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # one summary: rank 0 speaks for both
    assert summary["stop_reason"] == "0.1 minutes" and summary["steps"] > 0
    assert _step(run) == summary["steps"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["vqvae-best.ckpt", "vqvae-last.ckpt"]


@pytest.mark.slow
def test_pipeline_under_the_ddp_launcher_does_rank_zero_work_once(phantom_root: Path, tmp_path: Path) -> None:
    # issue 9.13: every rank used to run prepare_stage, encode, evaluate, sample and report on the same files
    run = tmp_path / "run"
    sets = [*TINY, "train.max_steps=8", "prior_train.max_steps=6", "sample.batch_size=2", "fabric.devices=2",
            "fabric.strategy=ddp", "data.limit_images=32", "data.val_limit_images=8"]  # fmt: skip
    result = brainvq("pipeline", "--data", str(phantom_root), "--run", str(run), "--preset", "demo",
                     "--samples", "2", "--quiet", *[a for s in sets for a in ("--set", s)], timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("report:") == 1  # rank 0 reports for both
    completed = json.loads((run / "pipeline.json").read_text())["completed"]
    assert completed[:3] == ["train-vqvae", "encode", "train-prior"] and completed[-1] == "report"
    assert _step(run) == 8 and len(list((run / "samples").glob("sample_*.png"))) == 2
    assert not list(run.rglob("*.tmp"))


@pytest.mark.slow
def test_resume_with_a_new_learning_rate_trains_at_it(phantom_root: Path, tmp_path: Path) -> None:
    """`--resume --set train.lr=X` (what the NaN guard advises) trains at X, as config.yaml and the
    checkpoint record, not at the learning rate the optimiser's saved state holds (issue 35, item 1)."""
    config = _config_file(tmp_path)
    run = tmp_path / "run"
    base = ["train-vqvae", "--run", str(run), "--quiet"]
    assert brainvq(*base, "--data", str(phantom_root), "--config", str(config), "--max-steps", "3").returncode == 0
    resumed = brainvq(*base, "--resume", "--max-steps", "5", "--set", "train.lr=0.0005")
    assert resumed.returncode == 0, resumed.stderr
    assert "train.lr: 0.002 -> 0.0005" in resumed.stderr
    state = load_checkpoint(RunDir(run).checkpoint("vqvae", "last"))
    assert state["config"]["train"]["lr"] == 0.0005
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == [0.0005]
    assert state["scheduler"]["base_lrs"] == [0.0005]
