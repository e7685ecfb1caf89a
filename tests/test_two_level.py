"""A two-level run as a user chains it (issue 11): separate `brainvq` processes for training, encoding,
both priors, evaluation, sampling, scoring and completion; resume of the top prior without
re-passing flags; the Python API; a stale top prior after the VQ-VAE changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import brainvq
import brainvq.anomaly.methods
from brainvq.codes import CodeMaps, decode_levels
from brainvq.runs import RunDir, load_checkpoint
from brainvq.sampling import Sampling, sample_codes, slice_conditions
from tests.conftest import TWO_LEVELS
from tests.training.test_resume_cli import brainvq as cli

pytestmark = pytest.mark.slow


def test_codes_hold_both_levels_and_both_priors_are_trained(two_level_run: Path) -> None:
    codes = CodeMaps.load(two_level_run / "codes" / "train.pt")
    assert codes.indices.shape[1:] == (16, 16) and codes.top_indices is not None
    assert codes.top_indices.shape[1:] == (8, 8) and codes.top_num_embeddings == 16
    run = RunDir(two_level_run)
    for stage in ("prior", "prior_top"):
        state = load_checkpoint(run.checkpoint(stage, "last"))
        assert state["loop"]["step"] == 15 and state["level"] == ("top" if stage == "prior_top" else "bottom")
    bottom = load_checkpoint(run.checkpoint("prior", "last"))["config"]["prior"]
    assert bottom["context_num_embeddings"] == 16 and bottom["context_factor"] == 2
    top = load_checkpoint(run.checkpoint("prior_top", "last"))["config"]["top_prior"]
    assert top["arch"] == "transformer" and (top["code_height"], top["code_width"]) == (8, 8)


def test_evaluate_and_sample_report_both_levels(two_level_run: Path, phantom_root: Path, tmp_path: Path) -> None:
    result = cli("evaluate", "--run", str(two_level_run), "--data", str(phantom_root), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout)
    assert metrics["levels"] == 2 and metrics["top_prior_hash"]
    for key in ("prior_nll_bits", "top_prior_nll_bits", "prior_accuracy", "top_prior_accuracy"):
        assert 0 < metrics[key] < 8, key  # fewer bits than a uniform guess over the codebooks
    assert metrics["top_codes_used"] >= 2 and -1 <= metrics["top_only_ssim"] <= 1
    sampled = cli("sample", "--run", str(two_level_run), "--n", "3", "--out", str(tmp_path / "s"), "--seed", "4")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    summary = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert summary["top_code_shape"] == [8, 8] and summary["code_shape"] == [16, 16]
    assert len(list((tmp_path / "s").glob("sample_*.png"))) == 3


def test_python_api_samples_top_then_bottom(two_level_run: Path) -> None:
    run = brainvq.load_run(two_level_run, device="cpu")
    first, second = brainvq.sample(run, 2, seed=1), brainvq.sample(run, 2, seed=1)
    assert first.top_codes is not None and first.top_codes.shape == (2, 8, 8)
    assert torch.equal(first.codes, second.codes) and torch.equal(first.top_codes, second.top_codes)
    naive = brainvq.sample(run, 2, seed=1, sampler="naive")
    assert torch.equal(naive.codes, first.codes) and naive.top_codes is not None
    assert torch.equal(naive.top_codes, first.top_codes)
    with torch.no_grad():  # the images are the decoded maps of both levels
        images = decode_levels(run.vqvae, first.codes, first.top_codes)
    torch.testing.assert_close(images, first.images)


def test_the_top_map_has_its_own_sampling_settings(two_level_run: Path, tmp_path: Path) -> None:
    """``top_map_temperature``/``top_map_top_p`` set the top map alone: the same draws as the two
    levels sampled by hand with those settings, from one generator; unset, the top map follows the
    bottom's; on the command line they are recorded, and a one-level run refuses them."""
    run = brainvq.load_run(two_level_run, device="cpu")
    split = brainvq.sample(
        run, 3, seed=3, top_p=0.3, top_map_temperature=0.7, top_map_top_p=1.0, background_check=False
    )  # the plain draw by hand below has no background check
    assert split.sampling == Sampling(1.0, 0.3, top_map_temperature=0.7, top_map_top_p=1.0, background_check=False)
    generator = torch.Generator().manual_seed(3)
    condition = slice_conditions(3, run.prior, None)
    top = sample_codes(run.top_prior, 3, run.top_code_shape, condition=slice_conditions(3, run.top_prior, None),
                       generator=generator, temperature=0.7, top_p=1.0)  # fmt: skip
    bottom = sample_codes(run.prior, 3, run.code_shape, condition=condition, context=top, generator=generator,
                          temperature=1.0, top_p=0.3)  # fmt: skip
    assert split.top_codes is not None and torch.equal(split.top_codes, top) and torch.equal(split.codes, bottom)
    follows = brainvq.sample(run, 3, seed=3, top_p=0.3, background_check=False)
    assert (follows.sampling.top_map_temperature, follows.sampling.top_map_top_p) == (1.0, 0.3)
    same = brainvq.sample(
        run, 3, seed=3, top_p=0.3, top_map_top_p=0.3, top_map_temperature=1.0, background_check=False
    )
    assert same.top_codes is not None and follows.top_codes is not None
    assert torch.equal(same.top_codes, follows.top_codes) and torch.equal(same.codes, follows.codes)
    assert not torch.equal(split.top_codes, follows.top_codes)  # the settings reach the top map
    out = tmp_path / "s"
    drawn = cli("sample", "--run", str(two_level_run), "--n", "2", "--out", str(out), "--top-map-top-p", "0.4")
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    summary = json.loads((out / "samples.json").read_text())
    assert (summary["top_p"], summary["top_map_top_p"], summary["top_map_temperature"]) == (1.0, 0.4, 1.0)
    bad = cli("sample", "--run", str(two_level_run), "--n", "2", "--out", str(out), "--top-map-top-p", "0")
    assert (
        bad.returncode == 2 and "top_map_top_p must be in (0, 1]" in bad.stderr and "Traceback" not in bad.stderr
    )


def test_the_background_check_redraws_only_flagged_maps_and_is_recorded(
    two_level_run: Path, tmp_path: Path
) -> None:
    """Through the CLI: with the check (the default) and without it, the same seed gives the same
    slices but for the redrawn ones; both records say what was done; a run whose encoded training
    split is gone samples without the check and says so."""
    drawn = {}
    for name, flags in (("checked", []), ("plain", ["--no-background-check"])):
        out = tmp_path / name
        result = cli("sample", "--run", str(two_level_run), "--n", "6", "--seed", "2", "--out", str(out), *flags)
        assert result.returncode == 0, result.stderr[-2000:]
        drawn[name] = json.loads((out / "samples.json").read_text())
        drawn[name]["pixels"] = [Path(p).read_bytes() for p in drawn[name]["images"]]
    checked, plain = drawn["checked"], drawn["plain"]
    assert checked["background_check"] is True and plain["background_check"] is False
    assert plain["redrawn_top_maps"] == 0 and checked["unresolved_top_maps"] <= checked["redrawn_top_maps"] <= 6
    differ = sum(a != b for a, b in zip(checked["pixels"], plain["pixels"], strict=True))
    assert differ <= checked["redrawn_top_maps"]  # only redrawn maps change their slices
    bare = tmp_path / "bare"
    shutil.copytree(two_level_run, bare)
    (bare / "codes" / "train.pt").unlink()
    result = cli("sample", "--run", str(bare), "--n", "2", "--out", str(tmp_path / "bare_samples"))
    assert result.returncode == 0 and "no background check of the top maps" in result.stderr
    assert "code maps not found" in result.stderr
    assert json.loads((tmp_path / "bare_samples" / "samples.json").read_text())["background_check"] is False


def test_score_anomaly_and_complete_on_a_two_level_run(
    two_level_run: Path, phantom_root: Path, tmp_path: Path
) -> None:
    scored = cli("score", "--run", str(two_level_run), "--data", str(phantom_root), "--split", "validate",
                 "--out", str(tmp_path / "score"), "--json")  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-2000:]
    result = json.loads(scored.stdout)
    assert result["top_mean_bits_per_code"] > 0 and "top_nll_bits" in result["per_image"][0]
    image = next((phantom_root / "keras_png_slices_validate").glob("*_slice_16.nii.png"))
    completed = cli("complete", "--run", str(two_level_run), "--image", str(image), "--keep-rows", "8",
                    "--n", "2", "--out", str(tmp_path / "complete"))  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert (tmp_path / "complete" / "completions.png").stat().st_size > 1000
    anomaly = cli("anomaly", "--run", str(two_level_run), "--data", str(phantom_root), "--split", "validate",
                  "--out", str(tmp_path / "anomaly"), "--json", "--no-maps")  # fmt: skip
    assert anomaly.returncode == 0, anomaly.stderr[-2000:]


def test_a_reversed_top_prior_gives_every_method_and_reads_the_map_backwards(
    two_level_run: Path, phantom_root: Path, tmp_path: Path
) -> None:
    """``train-prior --level top-reversed`` trains a second top prior on the turned maps; with it,
    ``anomaly --methods all`` scores every method (issue 37), and its NLL map is the turned maps' own."""
    from brainvq.anomaly.likelihood import reversed_top_nll_bits

    run = tmp_path / "run"
    shutil.copytree(two_level_run, run)
    assert RunDir(run).has_stage("prior_top_reversed")  # `train-prior` (all levels) trains it
    for path in (run / "checkpoints").glob("prior_top_reversed-*"):
        path.unlink()
    lesions = tmp_path / "lesions"
    assert (
        cli("lesions", "--data", str(phantom_root), "--split", "validate", "--out", str(lesions)).returncode == 0
    )
    missing = cli("anomaly", "--run", str(run), "--data", str(lesions), "--split", "validate",
                  "--methods", "top_z_both_orders", "--out", str(tmp_path / "refused"))  # fmt: skip
    assert missing.returncode != 0 and "top-reversed" in missing.stderr and "Traceback" not in missing.stderr
    fallback = cli("anomaly", "--run", str(run), "--data", str(lesions), "--split", "validate", "--no-maps", "--json",
                   "--out", str(tmp_path / "fallback"))  # fmt: skip
    assert fallback.returncode == 0 and json.loads(fallback.stdout)["chosen_method"] == "top_z"
    trained = cli(
        "train-prior", "--run", str(run), "--level", "top-reversed", "--max-steps", "10", "--quiet", "--json"
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    state = load_checkpoint(RunDir(run).checkpoint("prior_top_reversed", "last"))
    assert state["level"] == "top_reversed" and state["loop"]["step"] == 10
    loaded = brainvq.load_run(run, "cpu")
    assert loaded.top_reversed_prior is not None and loaded.config.top_prior.num_layers == 2
    codes = CodeMaps.load(run / "codes" / "validate.pt")
    top, slices = codes.top_indices[:4].long(), codes.slices[:4]
    logits = loaded.top_reversed_prior(top.flip(1, 2), slices)  # the prior reads the turned map
    expected = -torch.log_softmax(logits.float(), 1).gather(1, top.flip(1, 2)[:, None])[:, 0] / torch.log(
        torch.tensor(2.0)
    )
    assert torch.allclose(reversed_top_nll_bits(loaded, top, slices), expected.flip(1, 2), atol=1e-5)
    anomaly = cli("anomaly", "--run", str(run), "--data", str(lesions), "--split", "validate", "--methods", "all",
                  "--out", str(tmp_path / "anomaly"), "--json", "--no-maps", timeout=900)  # fmt: skip
    assert anomaly.returncode == 0, anomaly.stderr[-2000:]
    result = json.loads(anomaly.stdout)
    assert result["chosen_method"] == "top_z_both_orders_max"
    assert set(result["methods"]) == set(brainvq.anomaly.methods.METHODS)
    for scores in result["methods"].values():
        assert 0 <= scores["pixel_ap"] <= 1 and 0 <= scores["dice_at_operating_threshold"] <= 1


def test_train_prior_all_leaves_the_reversed_top_prior_out_when_the_config_says_so(
    two_level_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_level_run, run)
    for path in (run / "checkpoints").glob("prior*"):
        path.unlink()
    trained = cli("train-prior", "--run", str(run), "--set", "top_prior_train.reversed_prior=false",
                  "--max-steps", "3", "--quiet", "--json")  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert RunDir(run).has_stage("prior_top") and RunDir(run).has_stage("prior")
    assert not RunDir(run).has_stage("prior_top_reversed")
    added = cli("train-prior", "--run", str(run), "--level", "top-reversed", "--max-steps", "3", "--quiet")
    assert added.returncode == 0 and RunDir(run).has_stage("prior_top_reversed"), added.stderr[-2000:]


def _prior_weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(RunDir(run).checkpoint(stage, "last"))["model"]  # type: ignore[no-any-return]


def test_top_prior_resumes_exactly_without_repeating_flags(two_level_run: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for copy in (straight, resumed):
        shutil.copytree(two_level_run, copy)
    top_sets = [part for item in TWO_LEVELS if item.startswith("top_") for part in ("--set", item)]
    base = ["train-prior", "--level", "top", "--force", "--quiet", *top_sets]
    assert cli(*base, "--run", str(straight), "--max-steps", "6").returncode == 0
    assert cli(*base, "--run", str(resumed), "--max-steps", "3").returncode == 0
    again = cli("train-prior", "--level", "top", "--run", str(resumed), "--resume", "--max-steps", "6", "--quiet")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "overridden: top_prior_train.max_steps: 3 -> 6" in again.stderr
    first, second = _prior_weights(straight, "prior_top"), _prior_weights(resumed, "prior_top")
    assert [k for k, v in first.items() if not torch.equal(v, second[k])] == []
    # the bottom prior was left alone by --level top
    assert all(
        torch.equal(v, _prior_weights(two_level_run, "prior")[k])
        for k, v in _prior_weights(resumed, "prior").items()
    )


def test_weight_averaging_resumes_exactly_and_is_what_sampling_loads(two_level_run: Path, tmp_path: Path) -> None:
    """`top_prior_train.weight_ema_decay`: the checkpoint's `model` is the average (validated, loaded by
    `load_run`), `training_model` the raw weights; a resume continues both to the same state."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for copy in (straight, resumed):
        shutil.copytree(two_level_run, copy)
    top_sets = [part for item in TWO_LEVELS if item.startswith("top_") for part in ("--set", item)]
    average = ["--set", "top_prior_train.weight_ema_decay=0.5", "--set", "top_prior_train.epochs=null"]
    base = ["train-prior", "--level", "top", "--force", "--quiet", *top_sets, *average]
    assert cli(*base, "--run", str(straight), "--max-steps", "6").returncode == 0
    assert cli(*base, "--run", str(resumed), "--max-steps", "3").returncode == 0
    again = cli("train-prior", "--level", "top", "--run", str(resumed), "--resume", "--max-steps", "6", "--quiet")
    assert again.returncode == 0, again.stderr[-2000:]
    first, second = (load_checkpoint(RunDir(run).checkpoint("prior_top", "last")) for run in (straight, resumed))
    assert first["average_count"] == second["average_count"] == 6
    for key in ("model", "training_model"):
        assert [k for k, v in first[key].items() if not torch.equal(v, second[key][k])] == [], key
    weights = [k for k, v in first["model"].items() if v.is_floating_point() and "mask" not in k]
    assert any(not torch.equal(first["model"][k], first["training_model"][k]) for k in weights)
    loaded = brainvq.load_run(straight, device="cpu").require_top_prior().state_dict()
    best = load_checkpoint(RunDir(straight).checkpoint("prior_top", "best"))
    assert all(torch.equal(loaded[k].cpu(), best["model"][k]) for k in loaded)


def test_a_changed_vqvae_makes_both_priors_stale(two_level_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_level_run, run)
    resumed = cli("train-vqvae", "--run", str(run), "--resume", "--max-steps", "27", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    RunDir(run).checkpoint("vqvae", "best").unlink(missing_ok=True)  # later stages now use `last`, 2 steps on
    loaded = brainvq.load_run(run, device="cpu")
    assert loaded.prior is None and loaded.top_prior is None
    assert loaded.top_prior_problem is not None and "stale prior" in loaded.top_prior_problem
    refused = cli("sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "s"))
    assert refused.returncode != 0 and "stale" in refused.stderr and "Traceback" not in refused.stderr


def test_resume_after_a_stop_during_the_top_prior_starts_the_bottom_one(
    two_level_run: Path, tmp_path: Path
) -> None:
    """Training stopped during the top prior leaves no bottom checkpoint: `train-prior --resume`
    continues the top prior and starts the bottom one (issue 35, item 4)."""
    run = tmp_path / "run"
    shutil.copytree(two_level_run, run)
    for stage in ("prior", "prior_top", "prior_top_reversed"):
        for which in ("last", "best"):
            RunDir(run).checkpoint(stage, which).unlink(missing_ok=True)
    top_only = cli("train-prior", "--level", "top", "--run", str(run), "--max-steps", "3", "--quiet")
    assert top_only.returncode == 0, top_only.stderr[-2000:]
    resumed = cli("train-prior", "--run", str(run), "--resume", "--max-steps", "5", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    top, bottom = (load_checkpoint(RunDir(run).checkpoint(stage, "last")) for stage in ("prior_top", "prior"))
    assert (top["loop"]["step"], bottom["loop"]["step"]) == (5, 5)
    assert bottom["config"]["prior"]["context_channels"] == 8  # the run's own config, not the defaults


def test_sampling_settings_come_from_the_runs_config(two_level_run: Path, tmp_path: Path) -> None:
    """One source for sampling settings: RUN/config.yaml (which train-prior --set writes, and a user
    may edit), not the VQ-VAE checkpoint's frozen copy; samples.json shows what was used (issue 35, item 7)."""
    import yaml

    run = tmp_path / "run"
    shutil.copytree(two_level_run, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["sample"].update({"top_map_temperature": 0.5, "top_p": 0.9})
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    drawn = cli("sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "s"), "--device", "cpu")
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    record = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert (record["top_map_temperature"], record["top_p"]) == (0.5, 0.9)
    assert record["sampling_config"] == str(run / "config.yaml")
    assert brainvq.load_run(run, device="cpu").config.sample.top_map_temperature == 0.5
