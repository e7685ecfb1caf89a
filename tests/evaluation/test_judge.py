"""The judge: it learns tissue and slice on the phantom, segments folders, and refuses bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brainvq.cli import main
from brainvq.data.dataset import load_split
from brainvq.data.phantom import make_phantom
from brainvq.evaluation.judge import load_judge, score_dataset, weights_hash
from brainvq.runs import RunDir, stage_checkpoint
from tests.conftest import JUDGE_SETS


@pytest.mark.slow
def test_judge_learns_tissue_and_slice_on_the_phantom(trained_judge: Path, judge_data: Path) -> None:
    judge = load_judge(trained_judge, "cpu")
    assert len(judge.hash) == 16 and (trained_judge / "judge.json").is_file()
    scores = score_dataset(judge.model, load_split(judge_data, "test", with_masks=True), 32)
    assert scores.dice is not None
    assert scores.dice["gm"] > 0.7 and scores.dice["wm"] > 0.85, scores.dice
    assert scores.slice_error is not None and scores.slice_error < 6.0, scores.slice_error  # chance: about 10.7
    assert scores.features.shape == (64, judge.model.num_features)


@pytest.mark.slow
def test_a_judge_retrained_with_the_same_steps_keeps_its_hash(
    trained_judge: Path, judge_data: Path, tmp_path: Path
) -> None:
    # rebuilt in another process from the command line, as a user rebuilding a published table's judge would
    again = tmp_path / "judge"
    sets = [arg for value in JUDGE_SETS for arg in ("--set", value)]
    command = [sys.executable, "-m", "brainvq.cli", "train-judge", "--data", str(judge_data), "--out", str(again)]
    threads = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same sums in the same order
    subprocess.run([*command, *sets, "--quiet"], check=True, capture_output=True, env=threads)
    first, second = (json.loads((folder / "judge.json").read_text()) for folder in (trained_judge, again))
    assert first["steps"] == second["steps"] == 250
    assert second["hash"] == first["hash"] == load_judge(again, "cpu").hash
    files = [stage_checkpoint(RunDir(folder), "judge").read_bytes() for folder in (trained_judge, again)]
    assert files[0] != files[1]  # the checkpoints differ (their elapsed time), the weights do not
    judge = load_judge(again, "cpu")
    with torch.no_grad():
        next(judge.model.parameters()).view(-1)[0] += 1e-3
    assert weights_hash(judge.model) != judge.hash  # any change of a weight changes the hash


@pytest.mark.slow
def test_segment_writes_mask_levels_with_the_input_names(
    trained_judge: Path, judge_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = judge_data / "keras_png_slices_test"
    assert main(["segment", "--judge", str(trained_judge), str(folder), str(tmp_path / "masks")]) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == names
    values = set()
    for name in names[:10]:
        values |= set(np.unique(np.asarray(Image.open(tmp_path / "masks" / name))).tolist())
    assert values <= {0, 85, 170, 255} and {0, 170, 255} <= values


@pytest.mark.slow
def test_judge_bad_input_is_one_line(
    trained_judge: Path, judge_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(other / f"s{i}.png")
    assert main(["segment", "--judge", str(trained_judge), str(other), str(tmp_path / "m")]) == 2
    assert "but the judge was trained on 64x64 images" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["evaluate-samples", "--judge", str(trained_judge), "--real", str(judge_data), "--samples"]
    assert main([*argv, str(empty)]) == 2
    assert "no PNG images" in capsys.readouterr().err
    assert main([*argv, str(other)]) == 2
    assert "but the judge was trained on 64x64 images" in capsys.readouterr().err
    no_masks = tmp_path / "no_masks"
    make_phantom(no_masks, 3, size=64, num_slices=4)
    for folder in no_masks.glob("keras_png_slices_seg_*"):
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    assert main(["train-judge", "--data", str(no_masks), "--out", str(tmp_path / "j")]) == 2
    assert "has no tissue masks" in capsys.readouterr().err
