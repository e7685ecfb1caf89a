"""End to end on a tiny phantom: pipeline stages, encode/evaluate/sample outputs, report, resume-by-skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import brainvq
from brainvq.cli import main
from brainvq.codes import CodeMaps
from brainvq.config import load_config
from brainvq.pipeline import run_pipeline
from tests.conftest import TINY

pytestmark = pytest.mark.slow

STAGES = [
    "train-vqvae",
    "encode",
    "train-prior",
    "evaluate-validate",
    "evaluate-test",
    "sample",
    "figures",
    "report",
]


def test_every_stage_completes(finished_run: Path) -> None:
    assert json.loads((finished_run / "pipeline.json").read_text())["completed"] == STAGES
    for name in (
        "vqvae_curves.png",
        "codebook_usage.png",
        "reconstructions_validate.png",
        "reconstructions_test.png",
        "reconstructions_across_epochs.png",
        "prior_curves.png",
    ):
        assert (finished_run / "figures" / name).stat().st_size > 1000, name
    codes = CodeMaps.load(finished_run / "codes" / "train.pt")
    assert codes.indices.shape == (128, 16, 16) and codes.indices.dtype == torch.int16
    assert codes.subjects.tolist()[:2] == [1, 1] and codes.slices.tolist()[:2] == [0, 1]
    assert (finished_run / "template.npz").is_file()  # train-vqvae stores what `conform --like RUN` needs


def test_evaluation_json(finished_run: Path, phantom_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(finished_run),
                "--data",
                str(phantom_root),
                "--split",
                "test",
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    for key in (
        "split",
        "images",
        "ssim",
        "ssim_seed",
        "psnr",
        "ms_ssim",
        "codes_used",
        "perplexity",
        "prior_accuracy",
        "prior_nll_bits",
        "per_subject_ssim",
    ):
        assert key in result, key
    assert result["split"] == "test" and result["images"] == 32
    assert 0 < result["ssim"] < result["ssim_seed"] <= 1 and result["codes_used"] > 1
    assert 0 <= result["prior_accuracy"] <= 1 and result["prior_nll_bits"] > 0
    assert json.loads((finished_run / "metrics" / "evaluate_test.json").read_text())["ssim"] == result["ssim"]
    # issue 9.8/9.10: brain-masked metrics beside the whole image; the precision is the device's, stated
    from brainvq.devices import inference_precision

    assert result["brain_region"] == "masks (label > 0)" and result["brain_images"] > 0
    assert 0 < result["brain_ssim"] <= 1 and 0 < result["brain_psnr"] < 59
    assert result["precision"] == inference_precision(torch.device("cpu"))  # the run trained at 32-true
    assert "Infinity" not in (finished_run / "metrics" / "evaluate_test.json").read_text()


def test_sample_command(finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "sample",
        "--run",
        str(finished_run),
        "--n",
        "3",
        "--seed",
        "4",
        "--batch-size",
        "2",
        "--json",
        "--device",
        "cpu",
    ]
    record = finished_run / "metrics" / "sampling.json"  # the pipeline's sample stage wrote it
    before = record.read_bytes()
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["n"] == 3 and len(first["images"]) == 3 and "grid" in Path(first["grid"]).name
    assert main([*args, "--out", str(tmp_path / "b"), "--slice", "12"]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    for i in range(3):  # same seed, same model, same device -> same images
        assert (tmp_path / "a" / f"sample_{i:03d}.png").read_bytes() == (
            tmp_path / "c" / f"sample_{i:03d}.png"
        ).read_bytes()
    assert record.read_bytes() == before  # draws into other folders leave the run's record alone
    assert json.loads((tmp_path / "c" / "samples.json").read_text())["seconds"] > 0  # they keep their own
    run = brainvq.load_run(finished_run)
    result = brainvq.sample(run, 2, seed=4, batch_size=2, sampler="naive")
    assert torch.equal(result.codes, brainvq.sample(run, 2, seed=4, batch_size=2).codes)
    assert result.images.shape == (2, 1, 64, 64)


def test_second_pipeline_call_skips_everything(finished_run: Path, phantom_root: Path) -> None:
    before = (finished_run / "checkpoints" / "vqvae-last.ckpt").stat().st_mtime_ns
    lines: list[str] = []
    config = load_config(None, [f"data.root={phantom_root}", *TINY])
    run_pipeline(config, finished_run, progress=False, device="cpu", log=lines.append)
    assert sum("already complete, skipped" in line for line in lines) == len(STAGES) - 1
    assert (finished_run / "checkpoints" / "vqvae-last.ckpt").stat().st_mtime_ns == before


def _chromium() -> str | None:
    """Chromium on the PATH (``make test`` installs it where it can; tests never install anything)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_chromium_with_every_image(finished_run: Path, tmp_path: Path) -> None:
    report = finished_run / "report.html"
    page = report.read_text()
    assert "<img" in page and "http://" not in page and "https://" not in page  # self-contained
    for heading in (
        "Metrics",
        "Generated slices",
        "How real are the samples",
        "Training and reconstructions",
        "Configuration",
    ):
        assert heading in page
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (make test installs it with apt-get where it can, as root)")
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert 'data-images-checked="yes"' in result.stdout, result.stderr[-2000:]
    total = result.stdout.count("<img")
    assert total >= 7
    assert f'data-images-loaded="{total}"' in result.stdout and 'data-images-total="' + str(total) in result.stdout


def test_python_api_follows_the_runs_device(finished_run: Path) -> None:
    # issue 9.17: load_run and sample default to the device the run can use (a GPU when visible)
    import inspect

    from brainvq.devices import resolve_device

    assert inspect.signature(brainvq.load_run).parameters["device"].default == "auto"
    run = brainvq.load_run(finished_run)
    assert run.device == resolve_device("auto") and next(run.vqvae.parameters()).device.type == run.device.type
    result = brainvq.sample(run, 2, seed=0, batch_size=2)  # no device given: the run's
    assert result.images.shape[0] == 2


def test_score_anomaly_and_complete_commands(
    finished_run: Path, phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lesions = tmp_path / "lesions"
    assert main(["lesions", "--data", str(phantom_root), "--split", "validate", "--out", str(lesions)]) == 0
    capsys.readouterr()
    out = tmp_path / "anomaly"
    assert main(["anomaly", "--run", str(finished_run), "--data", str(lesions), "--split", "validate",
                 "--out", str(out), "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["chosen_method"] == "nll_z"  # a one-level run: no top map
    assert list(result["methods"]) == ["nll_z", "residual", "intensity"]
    for scores in result["methods"].values():
        assert {"pixel_ap", "pixel_auroc", "best_dice", "dice_at_operating_threshold", "image_auroc"} <= set(
            scores
        )
        assert 0 <= scores["pixel_ap"] <= 1 and 0 <= scores["dice_at_operating_threshold"] <= 1
    assert 0 < result["lesion_pixel_fraction"] < 1
    name = "case_005_slice_16.nii.png"
    assert (out / "anomaly" / name).is_file() and (out / "residual_overlays" / name).is_file()
    assert np.load(out / "anomaly" / "case_005_slice_16.nii.npy").shape == (64, 64)
    assert (finished_run / "metrics" / "anomaly_reference.pt").is_file()
    assert (finished_run / "metrics" / "anomaly_operating_thresholds.json").is_file()
    assert (
        result["figure"] == str(out / "anomaly_examples.png")
        and (out / "anomaly_examples.png").stat().st_size > 5000
    )
    # --images/--truth take any folder of slices with same-named lesion masks
    truth = tmp_path / "truth"
    truth.mkdir()
    for path in (lesions / "keras_png_slices_lesion_validate").iterdir():
        shutil.copy(path, truth / path.name.replace("lesion_", "case_"))
    assert main(["anomaly", "--run", str(finished_run), "--images", str(lesions / "keras_png_slices_validate"),
                 "--truth", str(truth), "--out", str(tmp_path / "again"), "--json", "--no-maps"]) == 0  # fmt: skip
    again = json.loads(capsys.readouterr().out)
    # a plain folder has no tissue masks: the maps are restricted to the bright foreground instead
    assert again["images"] == result["images"] and again["lesion_pixel_fraction"] > 0
    assert list(again["methods"]) == list(result["methods"])
    assert main(["score", "--run", str(finished_run), "--data", str(phantom_root), "--split", "validate",
                 "--out", str(tmp_path / "score"), "--json"]) == 0  # fmt: skip
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 32 and scores["mean_bits_per_code"] > 0
    assert (tmp_path / "score" / "overlays" / name).is_file()
    image = phantom_root / "keras_png_slices_validate" / name
    assert main(["complete", "--run", str(finished_run), "--image", str(image), "--keep-rows", "6", "--n", "2",
                 "--out", str(tmp_path / "complete")]) == 0  # fmt: skip
    assert (tmp_path / "complete" / "completions.png").stat().st_size > 1000


def test_evaluate_samples_with_a_run(
    finished_run: Path, trained_judge: Path, judge_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate-samples", "--judge", str(trained_judge), "--real", str(judge_data), "--split", "validate",
            "--run", str(finished_run), "--n", "4", "--json"]  # fmt: skip
    sampling = (finished_run / "metrics" / "sampling.json").read_text()
    assert main(argv) == 0
    assert (finished_run / "metrics" / "sampling.json").read_text() == sampling  # the run's own record stays
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 4 and result["slice_error"] is not None  # the slices sample() asked for
    assert set(result["reference"]) == {"real", "real_same_n", "reconstruction"}
    assert result["reference"]["real_same_n"]["n"] == 4  # the real floor drawn at the samples' size
    assert result["reference"]["reconstruction"]["n"] == result["reference"]["real"]["n"]
    saved = json.loads((finished_run / "metrics" / "realism_validate.json").read_text())
    assert saved["judge_hash"] == result["judge_hash"]
    assert (finished_run / "figures" / "tissue_fractions.png").is_file()
    assert (finished_run / "samples" / "realism_n4_seed0" / "grid.png").is_file()  # beside, not scored
    # samples drawn by an older prior are drawn again, not scored as this run's
    record = finished_run / "samples" / "realism_n4_seed0" / "samples.json"
    drawn = json.loads(record.read_text())
    real_slices = [int(name.split("_slice_")[1].split(".")[0])
                   for name in os.listdir(judge_data / "keras_png_slices_validate")]  # fmt: skip
    assert drawn["slices"][0] == min(real_slices) and drawn["slices"][-1] == max(real_slices)  # the real spread
    record.write_text(json.dumps({**drawn, "prior_hash": "an-older-prior"}))
    assert main(argv) == 0
    capsys.readouterr()
    assert json.loads(record.read_text())["prior_hash"] == drawn["prior_hash"]
    # another temperature gets its own samples and its own metrics file
    assert main([*argv, "--temperature", "0.5"]) == 0
    cooler = json.loads(capsys.readouterr().out)
    assert cooler["temperature"] == 0.5 and result["temperature"] == 1.0
    cooler_drawn = json.loads((finished_run / "samples" / "realism_n4_seed0_T0.5" / "samples.json").read_text())
    assert cooler_drawn["temperature"] == 0.5
    assert json.loads((finished_run / "metrics" / "realism_validate_T0.5.json").read_text())["temperature"] == 0.5
    assert main([*argv, "--seed", "1"]) == 0  # another seed: its own folder and metrics file
    capsys.readouterr()
    assert (finished_run / "samples" / "realism_n4_seed1" / "samples.json").is_file()
    assert (finished_run / "metrics" / "realism_validate_seed1.json").is_file()
    assert (finished_run / "figures" / "realism_seed1" / "tissue_fractions.png").is_file()
    # a nucleus below 1 (top-p) gets its own samples and metrics file too, and draws other codes
    assert main([*argv, "--top-p", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["top_p"] == 0.5 and result["top_p"] == 1.0
    nucleus_drawn = json.loads((finished_run / "samples" / "realism_n4_seed0_p0.5" / "samples.json").read_text())
    assert nucleus_drawn["top_p"] == 0.5 and json.loads(record.read_text())["top_p"] == 1.0
    assert (finished_run / "metrics" / "realism_validate_p0.5.json").is_file()
    assert main([*argv, "--top-p", "1.5"]) == 2 and "top_p must be in (0, 1]" in capsys.readouterr().err
    for flag in ("--temperature", "--top-p", "--top-map-top-p"):
        assert main(["evaluate-samples", "--judge", str(trained_judge), "--real", str(judge_data),
                     "--samples", str(finished_run / "samples"), flag, "0.5"]) == 2  # fmt: skip
        assert "need --run" in capsys.readouterr().err
    assert main([*argv, "--top-map-top-p", "0.5"]) == 2  # a one-level run has no top map
    assert "need a two-level run" in capsys.readouterr().err


def test_pipeline_force_checks_the_data_before_it_deletes_the_run(
    finished_run: Path, phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pipeline --force` with data it cannot use fails and leaves the old run whole (issue 35, item 2)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    plain = tmp_path / "plain_pngs"  # a plain folder: no slice indices for the default, conditioned priors
    plain.mkdir()
    for path in sorted((phantom_root / "keras_png_slices_train").glob("*.png"))[:8]:
        shutil.copy(path, plain / path.name.replace("case_", "img_"))
    assert main(["pipeline", "--data", str(plain), "--run", str(run), "--force"]) == 2
    assert "a plain folder of PNGs has no slice indices" in capsys.readouterr().err
    broken = tmp_path / "broken"  # the OASIS layout, but its first training image is not a PNG
    shutil.copytree(phantom_root, broken)
    first = sorted((broken / "keras_png_slices_train").glob("*.png"))[0]
    first.write_bytes(b"not a png")
    assert (
        main(
            [
                "pipeline",
                "--data",
                str(broken),
                "--run",
                str(run),
                "--force",
                *[part for s in TINY for part in ("--set", s)],
            ]
        )
        == 2
    )
    assert first.name in capsys.readouterr().err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_every_folder_command_reads_what_sample_writes(
    finished_run: Path, trained_judge: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """segment, score --images, anomaly --images and complete on a `sample` folder (samples.json and
    grid.png beside the slices) read the slices it lists (issue 35, item 5)."""
    samples = tmp_path / "samples"
    assert main(["sample", "--run", str(finished_run), "--n", "3", "--out", str(samples), "--device", "cpu"]) == 0
    assert (samples / "grid.png").is_file() and (samples / "samples.json").is_file()
    capsys.readouterr()
    masks = tmp_path / "masks"
    assert main(["segment", "--judge", str(trained_judge), str(samples), str(masks), "--device", "cpu"]) == 0
    assert sorted(p.name for p in masks.iterdir()) == [f"sample_{k:03d}.png" for k in range(3)]
    capsys.readouterr()
    assert main(["score", "--run", str(finished_run), "--images", str(samples), "--out", str(tmp_path / "score"),
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["images"] == 3
    assert main(["anomaly", "--run", str(finished_run), "--images", str(samples), "--out", str(tmp_path / "an"),
                 "--json", "--no-maps"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["images"] == 3
    assert main(["complete", "--run", str(finished_run), "--image", str(samples / "sample_001.png"),
                 "--keep-rows", "4", "--n", "1", "--out", str(tmp_path / "complete")]) == 0  # fmt: skip
    assert main(["complete", "--run", str(finished_run), "--image", str(samples / "grid.png"),
                 "--keep-rows", "4", "--n", "1", "--out", str(tmp_path / "complete")]) == 2  # fmt: skip
    assert "grid.png: not one of the folder's slices" in capsys.readouterr().err


def test_the_report_shows_the_realism_figures_of_every_setting(
    finished_run: Path, trained_judge: Path, judge_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scores drawn at other settings keep their figures under figures/realism<suffix>/; the report
    shows them beside their table (issue 35, item 10)."""
    from brainvq.report import write_report

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for path in [*(run / "metrics").glob("realism_*.json"), *(run / "figures").rglob("tissue_fractions.png")]:
        path.unlink()
    argv = ["evaluate-samples", "--judge", str(trained_judge), "--real", str(judge_data), "--split", "validate",
            "--run", str(run), "--n", "4", "--temperature", "0.5"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert (run / "figures" / "realism_T0.5" / "tissue_fractions.png").is_file()
    html = Path(write_report(run)).read_text()
    assert html.count("<figcaption>Tissue fractions against slice index") == 1
