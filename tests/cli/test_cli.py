"""The command line: exit codes, JSON, and one clear error line (no traceback) for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brainvq.cli import main
from brainvq.data.layout import image_dir
from tests.conftest import TINY


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_data_json_and_exit_codes(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "check-data", str(phantom_root), "--json")
    report = json.loads(out)
    assert code == 0 and report["problems"] == []
    assert report["splits"]["train"]["images"] == 128 and report["splits"]["train"]["subjects"] == 4
    copy = tmp_path / "copy"
    shutil.copytree(phantom_root, copy)
    victim = image_dir(copy, "train") / "case_002_slice_4.nii.png"
    victim.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out, _ = _run(capsys, "check-data", str(copy))
    assert code == 1 and "case_002_slice_4.nii.png: corrupt or truncated PNG" in out and "1 problems found" in out
    code, _, err = _run(capsys, "check-data", str(tmp_path / "missing"))
    assert code == 2 and err.strip() == f"brainvq: error: {tmp_path / 'missing'}: data root does not exist"


def test_phantom_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "phantom", str(tmp_path / "p"), "--subjects", "3", "--size", "32", "--slices", "4")
    assert code == 0 and "wrote 12 slices" in out
    assert len(list((tmp_path / "p").rglob("case_*.png"))) == 12
    code, _, err = _run(capsys, "phantom", str(tmp_path / "q"), "--subjects", "2")
    assert code == 2 and "at least 3" in err


def test_training_errors_are_one_line(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "train-vqvae", "--data", str(tmp_path / "nothing"), "--run", str(tmp_path / "r"))
    assert code == 2 and err.startswith("brainvq: error:") and "does not exist" in err and "Traceback" not in err
    code, _, err = _run(
        capsys,
        "train-vqvae",
        "--data",
        str(phantom_root),
        "--run",
        str(tmp_path / "r"),
        "--set",
        "model.num_embedings=3",
    )
    assert code == 2 and "unknown config key 'model.num_embedings'" in err
    code, _, err = _run(capsys, "train-prior", "--run", str(tmp_path / "r"))
    assert code == 2 and "no trained VQ-VAE" in err
    code, _, err = _run(capsys, "sample", "--run", str(tmp_path / "nowhere"))
    assert code == 2 and "run directory does not exist" in err


def _tiny_vqvae_run(phantom_root: Path, run: Path, capsys: pytest.CaptureFixture[str]) -> int:
    """Train a tiny VQ-VAE for 2 steps through the CLI; returns the exit code."""
    sets = [arg for item in TINY for arg in ("--set", item)]
    limits = ["--set", "data.limit_images=16", "--set", "data.val_limit_images=8"]
    code, _, _ = _run(
        capsys,
        "train-vqvae",
        "--data",
        str(phantom_root),
        "--run",
        str(run),
        "--max-steps",
        "2",
        "--quiet",
        *limits,
        *sets,
    )
    return code


def test_mismatched_checkpoint_is_refused(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _tiny_vqvae_run(phantom_root, run, capsys) == 0
    path = run / "checkpoints" / "vqvae-last.ckpt"
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["num_embeddings"] = 64  # config no longer matches the weights
    torch.save(state, path)
    (run / "checkpoints" / "vqvae-best.ckpt").unlink()
    code, _, err = _run(capsys, "evaluate", "--run", str(run), "--data", str(phantom_root))
    assert code == 2 and "vqvae-last.ckpt: checkpoint does not match its own config" in err
    path.write_bytes(b"not a checkpoint")
    code, _, err = _run(capsys, "evaluate", "--run", str(run), "--data", str(phantom_root))
    assert code == 2 and "vqvae-last.ckpt: not a readable brainvq checkpoint" in err


def test_wrong_image_size_is_refused(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _tiny_vqvae_run(phantom_root, run, capsys) == 0
    other = tmp_path / "other"
    other.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(other / f"x{i}.png")
    code, _, err = _run(capsys, "encode", "--run", str(run), "--data", str(other), "--splits", "all")
    assert code == 2 and "the data's images are 32x32 but this VQ-VAE was trained on 64x64 images" in err
    code, _, err = _run(capsys, "sample", "--run", str(run), "--out", str(tmp_path / "s"))
    assert code == 2 and "this run has no trained prior" in err
    code, _, err = _run(capsys, "train-prior", "--run", str(run))
    assert code == 2 and "codes/train.pt: code maps not found (run `brainvq encode` first)" in err


def _all_actions(parser: object, path: str = "brainvq") -> list[tuple[str, object]]:
    import argparse

    found: list[tuple[str, object]] = []
    for action in parser._actions:  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _all_actions(child, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            found.append((path, action))
    return found


def test_every_option_has_a_help_line_and_there_is_a_version(capsys: pytest.CaptureFixture[str]) -> None:
    from brainvq import __version__
    from brainvq.cli import build_parser

    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in _all_actions(build_parser())
               if not a.help]  # type: ignore[attr-defined]  # fmt: skip
    assert missing == []
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"brainvq {__version__}"


def test_config_show_prints_what_a_partial_file_and_overrides_resolve_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from brainvq.config import Config

    partial = tmp_path / "partial.yaml"
    partial.write_text("prior_train:\n  max_minutes: 10\n")
    code, out, _ = _run(capsys, "config", "show", "--config", str(partial), "--set", "sample.n=64")
    shown = yaml.safe_load(out)
    assert code == 0 and out.startswith(f"# resolved from {partial} with 1 --set")
    assert shown["prior_train"]["max_minutes"] == 10 and shown["prior_train"]["batch_size"] == 8
    assert shown["sample"]["n"] == 64 and shown["sample"]["top_map_temperature"] == 1.15
    assert shown == {**Config().to_dict(), "prior_train": shown["prior_train"], "sample": shown["sample"]}
    code, out, _ = _run(capsys, "config", "show", "--preset", "oasis-cpu")
    assert code == 0 and yaml.safe_load(out)["train"]["max_steps"] == 1742
    code, _, err = _run(capsys, "config", "show", "--set", "model.levels=3")
    assert code == 2 and "config key 'model.levels'" in err


def test_devices_says_what_auto_picks_and_why(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BRAINVQ_CACHE", str(tmp_path))
    code, out, _ = _run(capsys, "devices", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["precision"] in ("32-true", "bf16-mixed", "16-mixed") and shown["why"]


def test_the_generated_references_are_current() -> None:
    """docs/cli.md and docs/configuration.md are what `python -m brainvq.cli.reference` writes now."""
    from brainvq.cli.reference import cli_reference, config_reference

    docs = Path(__file__).resolve().parents[2] / "docs"
    assert (docs / "cli.md").read_text() == cli_reference(), (
        "run: python -m brainvq.cli.reference cli > docs/cli.md"
    )
    assert (docs / "configuration.md").read_text() == config_reference(), (
        "run: python -m brainvq.cli.reference config > docs/configuration.md"
    )
