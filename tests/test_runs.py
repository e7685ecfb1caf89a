"""Run directories: --force deletes only what brainvq made, inputs are checked before anything is
deleted, and results never outlive the model they came from (issue 9, items 3 and 12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainvq.cli import main
from brainvq.codes import CodeMaps
from brainvq.runs import RunDir, file_hash, load_run, stage_checkpoint
from tests.conftest import TINY

SETS = [arg for item in [*TINY, "data.limit_images=48", "data.val_limit_images=16"] for arg in ("--set", item)]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _train_vqvae(capsys: pytest.CaptureFixture[str], data: Path, run: Path, *extra: str) -> int:
    return _cli(
        capsys, "train-vqvae", "--data", str(data), "--run", str(run), "--max-steps", "6", "--quiet", *SETS, *extra
    )[0]


def test_force_never_deletes_a_folder_brainvq_did_not_make(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "work"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code, _, err = _cli(capsys, "demo", "--out", str(mine), "--force")
    assert code == 2 and "not a brainvq demo folder" in err and "refusing to delete" in err
    code, _, err = _cli(capsys, "pipeline", "--data", str(phantom_root), "--run", str(mine), "--force")
    assert code == 2 and "refusing to delete" in err
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_train_vqvae_into_a_foreign_folder_is_refused(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "work"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = _cli(capsys, "train-vqvae", "--data", str(phantom_root), "--run", str(mine), "--force",
                        "--max-steps", "1", "--quiet", *SETS)  # fmt: skip
    assert code == 2 and "is not a brainvq run" in err
    assert (mine / "notes.txt").read_text() == "keep"


def test_force_with_a_mistyped_data_path_deletes_nothing(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _train_vqvae(capsys, phantom_root, run) == 0
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    code, _, err = _cli(capsys, "train-vqvae", "--data", str(tmp_path / "no-such-folder"), "--run", str(run),
                        "--force", *SETS)  # fmt: skip
    assert code == 2 and "data root does not exist" in err
    assert (
        sorted(p.name for p in (run / "checkpoints").iterdir()) == before == ["vqvae-best.ckpt", "vqvae-last.ckpt"]
    )


@pytest.mark.parametrize("name", ["2024", "yes", "on", "null", "a: b"])
def test_data_paths_are_strings_never_yaml(
    phantom_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).symlink_to(phantom_root)
    assert _train_vqvae(capsys, Path(name), tmp_path / "run", "--max-steps", "1") == 0
    assert (
        RunDir(tmp_path / "run").config.read_text().count(f"root: {name!r}")
        + RunDir(tmp_path / "run").config.read_text().count(f"root: '{name}'")
        >= 1
    )


@pytest.mark.slow
def test_results_never_outlive_their_model(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    sets = [*SETS, "--set", "prior_train.max_steps=4", "--set", "train.max_steps=6"]
    code, _, err = _cli(capsys, "pipeline", "--data", str(phantom_root), "--run", str(run), "--preset", "demo",
                        "--samples", "2", "--quiet", *sets)  # fmt: skip
    assert code == 0, err
    first_hash = file_hash(stage_checkpoint(RunDir(run), "vqvae"))
    evaluation = json.loads((run / "metrics" / "evaluate_validate.json").read_text())
    samples = json.loads((run / "samples" / "samples.json").read_text())
    codes = CodeMaps.load(run / "codes" / "train.pt")
    prior = __import__("brainvq.runs").runs.load_checkpoint(run / "checkpoints" / "prior-last.ckpt")
    assert (
        evaluation["vqvae_hash"] == samples["vqvae_hash"] == codes.vqvae_hash == prior["vqvae_hash"] == first_hash
    )

    # A retrained VQ-VAE with the old prior, code maps and pipeline record put back beside it (as a
    # user copying files around, or an older brainvq, would leave them): all of them are stale.
    import shutil

    keep = tmp_path / "keep"
    shutil.copytree(run, keep)
    assert _train_vqvae(capsys, phantom_root, run, "--force", "--set", "train.seed=1") == 0
    for name in ("checkpoints/prior-last.ckpt", "checkpoints/prior-best.ckpt", "pipeline.json"):
        shutil.copy(keep / name, run / name)
    shutil.copytree(keep / "codes", run / "codes")
    loaded = load_run(run, "cpu")
    assert loaded.prior is None and "stale prior" in (loaded.prior_problem or "")
    code, _, err = _cli(capsys, "sample", "--run", str(run), "--n", "1")
    assert code == 2 and "stale prior" in err
    code, _, err = _cli(capsys, "train-prior", "--run", str(run), "--resume")
    assert code == 2 and "stale code maps" in err and "brainvq encode" in err
    code, out, _ = _cli(capsys, "evaluate", "--run", str(run), "--data", str(phantom_root), "--json")
    assert (
        code == 0 and "prior_accuracy" not in json.loads(out) and "stale prior" in json.loads(out)["prior_problem"]
    )

    # The pipeline redoes every stage after the VQ-VAE, and then everything agrees again.
    code, _, err = _cli(capsys, "pipeline", "--data", str(phantom_root), "--run", str(run), "--preset", "demo",
                        "--samples", "2", "--quiet", *sets)  # fmt: skip
    assert code == 0, err
    new_hash = file_hash(stage_checkpoint(RunDir(run), "vqvae"))
    assert new_hash != first_hash
    evaluation = json.loads((run / "metrics" / "evaluate_validate.json").read_text())
    assert evaluation["vqvae_hash"] == CodeMaps.load(run / "codes" / "train.pt").vqvae_hash == new_hash
    assert evaluation["prior_accuracy"] is not None and load_run(run, "cpu").prior is not None

    # --force on the VQ-VAE removes everything derived from the old model.
    assert _train_vqvae(capsys, phantom_root, run, "--force") == 0
    for name in ("pipeline.json", "samples", "codes", "report.html", "metrics/evaluate_validate.json"):
        assert not (run / name).exists(), name
    assert not RunDir(run).has_stage("prior")


def test_a_plain_folder_is_refused_with_every_set_it_needs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The default (two-level) pipeline conditions both priors on the slice index, which a plain
    folder of PNGs lacks: one error names both --set's, before anything is trained."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "plain"
    data.mkdir()
    for i in range(4):
        Image.fromarray(np.full((64, 64), 40 * i, dtype=np.uint8)).save(data / f"img{i}.png")
    code, _, err = _cli(capsys, "pipeline", "--data", str(data), "--run", str(tmp_path / "run"))
    assert code != 0 and "Traceback" not in err
    assert "--set prior.condition_on_slice=false --set top_prior.condition_on_slice=false" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
