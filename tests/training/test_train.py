"""The training engine: learning happens, runs are protected, resume is exact, NaNs stop cleanly, DDP agrees."""

from __future__ import annotations

import faulthandler
import functools
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from brainvq.config import Config, apply_overrides
from brainvq.data.dataset import load_split
from brainvq.devices import end_process_group
from brainvq.errors import RunError, TrainingError
from brainvq.runs import RunDir, load_checkpoint
from brainvq.training.engine import Engine
from brainvq.training.launch import make_fabric
from brainvq.training.schedule import EpochBatches
from brainvq.training.stages import train_vqvae
from brainvq.training.task import StepOutput
from brainvq.training.tasks import VQVAETask


def _limited(config: Config, *overrides: str) -> Config:
    return apply_overrides(config, ["data.limit_images=48", "data.val_limit_images=16", *overrides])


def test_training_learns_and_fills_the_run(tiny_config: Config, tmp_path: Path) -> None:
    config = _limited(tiny_config, "train.max_steps=40")
    summary = train_vqvae(config, tmp_path / "run", progress=False)
    run = RunDir(tmp_path / "run")
    assert summary["steps"] == 40 and summary["stop_reason"] == "40 steps"
    history = (run.metrics / "vqvae_history.json").read_text()
    assert "val_ssim" in history
    steps = __import__("json").loads(history)["steps"]
    assert steps[-1][1] < steps[0][1] * 0.7  # the loss went down
    assert (
        run.config.is_file()
        and run.checkpoint("vqvae", "last").is_file()
        and run.checkpoint("vqvae", "best").is_file()
    )
    assert (run.snapshots / "originals.pt").is_file()
    assert list((run.logs / "csv" / "vqvae").rglob("metrics.csv"))
    assert list((run.logs / "tensorboard" / "vqvae").rglob("events.out.tfevents.*"))
    checkpoint = load_checkpoint(run.checkpoint("vqvae", "last"))
    assert checkpoint["config"]["model"]["num_embeddings"] == 32  # the checkpoint alone rebuilds the model
    assert summary["last"]["val_codes_used"] > 4


def test_existing_run_is_never_overwritten(tiny_config: Config, tmp_path: Path) -> None:
    config = _limited(tiny_config, "train.max_steps=2")
    train_vqvae(config, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="already holds a vqvae checkpoint.*--resume.*--force"):
        train_vqvae(config, tmp_path / "run", progress=False)
    train_vqvae(config, tmp_path / "run", progress=False, force=True)
    with pytest.raises(RunError, match="nothing to resume"):
        train_vqvae(config, tmp_path / "other", progress=False, resume=True)


def _state(run: Path) -> dict[str, Any]:
    return load_checkpoint(RunDir(run).checkpoint("vqvae", "last"))


@pytest.mark.parametrize("split_at", [3, 7])
def test_resume_reaches_the_same_state(tiny_config: Config, tmp_path: Path, split_at: int) -> None:
    # 48 images / batch 8 = 6 steps an epoch: split_at=7 resumes across an epoch boundary.
    config = _limited(tiny_config, "train.checkpoint_every_steps=100")
    straight = apply_overrides(config, ["train.max_steps=10"])
    train_vqvae(straight, tmp_path / "a", progress=False)
    train_vqvae(apply_overrides(config, [f"train.max_steps={split_at}"]), tmp_path / "b", progress=False)
    train_vqvae(straight, tmp_path / "b", progress=False, resume=True)
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert a["loop"]["step"] == b["loop"]["step"] == 10
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key  # weights, codebook, EMA statistics
    for key, value in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][key][n]) for n, v in value.items())
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _limited(tiny_config, "train.max_steps=20", "train.checkpoint_every_steps=2")
    original = VQVAETask.training_step
    calls = {"n": 0}

    def poisoned(self: VQVAETask, model: Any, batch: Any) -> StepOutput:
        calls["n"] += 1
        output = original(self, model, batch)
        if calls["n"] == 5:
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(VQVAETask, "training_step", poisoned)
    with pytest.raises(TrainingError, match="the loss became non-finite at step 5.*last good checkpoint"):
        train_vqvae(config, tmp_path / "run", progress=False)
    saved = _state(tmp_path / "run")
    assert saved["loop"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_epoch_batches_are_deterministic_and_sharded() -> None:
    one = EpochBatches(20, 4, seed=1)
    assert list(one.epoch(0)) == list(EpochBatches(20, 4, seed=1).epoch(0))
    assert list(one.epoch(0)) != list(one.epoch(1))
    assert list(one.epoch(0, skip=2)) == list(one.epoch(0))[2:]
    ranks = [list(EpochBatches(20, 4, seed=1, rank=r, world_size=2).epoch(0)) for r in range(2)]
    seen = [i for batches in ranks for batch in batches for i in batch]
    assert len(seen) == len(set(seen)) == 16


RANK_WATCHDOG_SECONDS = 120  # each of these workers finishes in seconds


def _watched(worker: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A spawned rank that hangs prints every thread's stack and exits after RANK_WATCHDOG_SECONDS, so
    the launch fails with a trace instead of waiting on it forever (a hang seen in CI twice: the gloo
    teardown deadlock that end_process_group's docstring describes)."""

    @functools.wraps(worker)
    def watched(*args: Any) -> dict[str, Any]:
        faulthandler.dump_traceback_later(RANK_WATCHDOG_SECONDS, exit=True)
        try:
            return worker(*args)
        finally:
            faulthandler.cancel_dump_traceback_later()

    return watched


@_watched
def _ddp_worker(fabric: Any, config: Config, run_root: str) -> dict[str, Any]:
    train_set = load_split(config.data.root, "train", limit_images=32)
    val_set = load_split(config.data.root, "validate", limit_images=13)  # 13: the shards differ in size
    task = VQVAETask(config, config.train, train_set, val_set)
    engine = Engine(task, fabric, RunDir(run_root), resume=False, progress=False)
    engine.fit()
    sharded, whole = engine._validate(), task.validate(engine.model)
    flat = torch.cat([t.detach().float().flatten() for t in engine.model.state_dict().values()])
    gathered = fabric.all_gather(flat)
    end_process_group()
    return {
        "max_difference": float((gathered - gathered[0]).abs().max()),
        "world_size": fabric.world_size,
        "steps": engine.state.step,
        "codebook_moved": float(engine.model.quantizer.codebook.abs().sum()),
        "sharded": sharded,
        "whole": whole,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    config = apply_overrides(
        tiny_config,
        [
            "train.max_steps=6",
            "fabric.devices=2",
            "fabric.strategy=ddp_spawn",
            "fabric.accelerator=cpu",
            "train.batch_size=4",
        ],
    )
    RunDir(tmp_path / "run").prepare_stage("vqvae", resume=False, force=False)
    fabric = make_fabric(config.fabric)
    result = fabric.launch(_ddp_worker, config, str(tmp_path / "run"))
    assert result["world_size"] == 2 and result["steps"] == 6
    assert result["max_difference"] == 0.0  # parameters and codebook buffers identical on both ranks
    # issue 9.13: validation is sharded across ranks and summed exactly
    assert (
        result["sharded"]["val_images"] == 13.0
        and result["sharded"]["val_codes_used"] == result["whole"]["val_codes_used"]
    )
    for key in ("val_ssim", "val_psnr", "val_mse", "val_perplexity"):
        assert result["sharded"][key] == pytest.approx(result["whole"][key], rel=1e-9, abs=1e-12), key


@_watched
def _disagreeing_worker(fabric: Any, config: Config, run_root: str, how: str) -> dict[str, Any]:
    """Rank 1 alone wants to stop: a shorter time budget, or a NaN loss (issue 9.13)."""
    train_set = load_split(config.data.root, "train", limit_images=32)
    task = VQVAETask(config, config.train, train_set, None)
    if fabric.global_rank == 1 and how == "budget":
        task.train_config = apply_overrides(config, ["train.max_minutes=0.001"]).train
    if fabric.global_rank == 1 and how == "nan":
        original = task.training_step

        def poisoned(model: Any, batch: Any) -> StepOutput:
            output = original(model, batch)
            output.loss = output.loss * float("nan") if engine.state.step == 3 else output.loss
            return output

        task.training_step = poisoned  # type: ignore[method-assign]
    engine = Engine(task, fabric, RunDir(run_root), resume=False, progress=False)
    try:
        engine.fit()
        outcome: dict[str, Any] = {"error": "", "step": engine.state.step, "reason": engine.state.stop_reason}
    except TrainingError as error:
        outcome = {"error": str(error), "step": engine.state.step}
    end_process_group()  # after the except block: its traceback held the DDP module (see end_process_group)
    return outcome


@pytest.mark.slow
@pytest.mark.parametrize("how", ["budget", "nan"])
def test_ddp_ranks_agree_to_stop(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    from datetime import timedelta

    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    config = apply_overrides(tiny_config, ["train.max_steps=40", "train.batch_size=4", "train.max_minutes=5"])
    RunDir(tmp_path / "run").prepare_stage("vqvae", resume=False, force=False)
    # a short collective timeout: ranks that stop apart fail in seconds instead of hanging for 30 minutes
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=20))
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy, precision="32-true")
    result = fabric.launch(_disagreeing_worker, config, str(tmp_path / "run"), how)
    if how == "budget":  # rank 0's own clock says go on; it must stop with rank 1, at once
        assert result["error"] == "" and result["reason"] == "5.0 minutes" and result["step"] < 40
    else:  # rank 0's loss is finite; it must stop with rank 1, before the update
        assert "the loss became non-finite at step 4" in result["error"] and result["step"] == 3


def test_non_finite_gradients_stop_before_the_update(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 9.11: a finite loss with NaN gradients used to write NaN weights into `last`
    config = _limited(tiny_config, "train.max_steps=20", "train.checkpoint_every_steps=2")
    original = VQVAETask.training_step
    calls = {"n": 0}

    def poisoned(self: VQVAETask, model: Any, batch: Any) -> StepOutput:
        calls["n"] += 1
        output = original(self, model, batch)
        if calls["n"] == 5:  # the loss stays finite; one gradient turns NaN in backward
            weight = next(p for p in model.parameters() if p.requires_grad)
            weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))
        return output

    monkeypatch.setattr(VQVAETask, "training_step", poisoned)
    with pytest.raises(TrainingError, match="a gradient became non-finite at step 5.*last good checkpoint"):
        train_vqvae(config, tmp_path / "run", progress=False)
    state = _state(tmp_path / "run")
    assert state["loop"]["step"] == 4
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())


def test_nan_message_never_names_a_missing_checkpoint(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _limited(tiny_config, "train.max_steps=20", "train.checkpoint_every_steps=100")
    original = VQVAETask.training_step

    def poisoned(self: VQVAETask, model: Any, batch: Any) -> StepOutput:
        output = original(self, model, batch)
        output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(VQVAETask, "training_step", poisoned)
    with pytest.raises(TrainingError, match="No checkpoint was written yet") as error:
        train_vqvae(config, tmp_path / "run", progress=False)
    assert "vqvae-last.ckpt" not in str(error.value)


def test_weight_average_is_a_plain_mean_then_an_ema() -> None:
    from torch.optim.swa_utils import AveragedModel

    from brainvq.training.schedule import warm_ema

    model = torch.nn.Linear(1, 1, bias=False)
    average = AveragedModel(model, multi_avg_fn=warm_ema(0.8))  # memory: 1 / (1 - 0.8) = 5 steps
    expected = 0.0
    for step in range(1, 9):
        model.weight.data.fill_(float(step))
        average.update_parameters(model)
        expected = sum(range(1, step + 1)) / step if step <= 5 else 0.8 * expected + 0.2 * step
        assert average.module.weight.item() == pytest.approx(expected), step
    assert expected == pytest.approx(0.8**3 * 3 + 0.2 * (0.8**2 * 6 + 0.8 * 7 + 8))


def _fp16_fabric() -> Any:
    """16-mixed with a real gradient scaler, on the CPU (the connector would turn a plain
    `precision="16-mixed"` into bf16 there; GPUs without bf16 get exactly this plugin)."""
    from lightning.fabric import Fabric
    from lightning.fabric.plugins.precision import MixedPrecision

    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**20))
    return Fabric(accelerator="cpu", devices=1, plugins=[plugin])


def _fp16_steps(config: Config, run: Path, steps: int, resume: bool) -> None:
    config = apply_overrides(config, [f"train.max_steps={steps}", "fabric.precision=16-mixed"])
    train_set, val_set = load_split(config.data.root, "train", limit_images=32), None
    if not resume:
        RunDir(run).prepare_stage("vqvae", resume=False, force=False)
    Engine(VQVAETask(config, config.train, train_set, val_set), _fp16_fabric(), RunDir(run), resume=resume,
           progress=False).fit()  # fmt: skip


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
def test_16_mixed_resume_restores_the_gradient_scaler(tiny_config: Config, tmp_path: Path) -> None:
    """The GradScaler's scale and growth tracker are saved and restored, so a 16-mixed resume is
    exact (issue 35, item 8)."""
    config = apply_overrides(tiny_config, ["train.batch_size=4", "train.epochs=null"])
    _fp16_steps(config, tmp_path / "straight", 8, resume=False)
    _fp16_steps(config, tmp_path / "resumed", 4, resume=False)
    _fp16_steps(config, tmp_path / "resumed", 8, resume=True)
    straight, resumed = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert straight["precision"]["scale"] < 2.0**20  # the scaler did back off: its state matters
    assert straight["precision"] == resumed["precision"]
    assert [k for k, v in straight["model"].items() if not torch.equal(v, resumed["model"][k])] == []


@_watched
def _failing_save_worker(fabric: Any, config: Config, run_root: str) -> dict[str, Any]:
    """Rank 0 cannot write its checkpoint (the path is taken by a folder); rank 1 must not wait for it."""
    train_set = load_split(config.data.root, "train", limit_images=32)
    engine = Engine(VQVAETask(config, config.train, train_set, None), fabric, RunDir(run_root), resume=False,
                    progress=False)  # fmt: skip
    try:
        engine.fit()
        outcome: dict[str, Any] = {"error": "", "step": engine.state.step}
    except TrainingError as error:
        outcome = {"error": str(error), "step": engine.state.step}
    end_process_group()
    return outcome


@pytest.mark.slow
def test_a_failed_write_on_rank_zero_stops_every_rank(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    config = apply_overrides(
        tiny_config, ["train.max_steps=12", "train.batch_size=4", "train.checkpoint_every_steps=2"]
    )
    run = RunDir(tmp_path / "run")
    run.prepare_stage("vqvae", resume=False, force=False)
    run.checkpoint("vqvae", "last").mkdir()  # the rename onto it fails on rank 0 alone
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=20))
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy, precision="32-true")
    result = fabric.launch(_failing_save_worker, config, str(run.root))
    assert "could not write the last checkpoint" in result["error"] and result["step"] == 2


def test_image_sides_the_encoder_cannot_halve_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sides not divisible by the downsampling factor: one line naming a file (issue 35, item 10)."""
    from brainvq.cli import main
    from brainvq.data.phantom import make_phantom

    make_phantom(tmp_path / "data", num_subjects=3, seed=0, size=66, num_slices=4)
    argv = ["train-vqvae", "--data", str(tmp_path / "data"), "--run", str(tmp_path / "run"), "--max-steps", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "images are 66x66, but this model needs sides divisible by 16" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
