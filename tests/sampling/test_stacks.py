"""Whole stacks as a user makes them (issue 38): the stack prior trained through the CLI, ``sample
--volumes`` (NIfTI volumes, OASIS-layout PNGs, tissue labels), fast == naive sampling, the pipeline's
stack stages, and ``evaluate-samples --volumes`` on drawn and written stacks."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import brainvq
from brainvq.codes import CodeMaps
from brainvq.data.layout import scan_split
from brainvq.runs import RunDir, load_checkpoint
from tests.conftest import TWO_LEVELS
from tests.training.test_resume_cli import brainvq as cli

pytestmark = pytest.mark.slow

# Stacks drawn where the test is not about how: one candidate, no guidance (half the time of the defaults)
CHEAP = ("--candidates", "1", "--guidance", "0")


@pytest.fixture(scope="module")
def stack_run(two_level_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("stack") / "run"
    shutil.copytree(two_level_run, run)
    trained = cli("train-prior", "--run", str(run), "--level", "stack", "--max-steps", "10", "--quiet",
                  "--set", "top_prior.context_mode=prefix")  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    return run


def test_the_stack_prior_learns_each_slice_after_the_previous_one_of_its_subject(stack_run: Path) -> None:
    codes = CodeMaps.load(stack_run / "codes" / "train.pt")
    stack = codes.level("stack")
    assert codes.top_indices is not None and codes.top_num_embeddings is not None
    assert stack.top_num_embeddings == codes.top_num_embeddings + 1
    for i in (0, 5, 40, len(codes) - 1):
        subject, index = int(codes.subjects[i]), int(codes.slices[i])
        batch = stack.batch([i])
        assert torch.equal(batch["codes"][0], codes.top_indices[i].long())
        if index == 0:
            assert (batch["context"] == codes.top_num_embeddings).all()  # "no previous slice"
        else:
            before = int(((codes.subjects == subject) & (codes.slices == index - 1)).nonzero()[0])
            assert torch.equal(batch["context"][0], codes.top_indices[before].long())
    state = load_checkpoint(RunDir(stack_run).checkpoint("prior_stack", "last"))
    assert state["level"] == "stack" and state["config"]["top_prior"]["context_mode"] == "prefix"
    resolved = (stack_run / "config.yaml").read_text()
    assert "context_mode: prefix" not in resolved  # the run's own top prior section is untouched


def test_sample_volumes_writes_stacks_a_viewer_and_brainvq_read_back(stack_run: Path, tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np
    from PIL import Image

    from brainvq.conform.geometry import stack_volume

    out = tmp_path / "stacks"
    drawn = cli("sample", "--run", str(stack_run), "--volumes", "2", "--out", str(out), "--seed", "3", *CHEAP,
                "--json")  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    record = json.loads(drawn.stdout)
    assert record["stacks"] == 2 and record["slices"] == 32 and (out / "stacks.png").stat().st_size > 5000
    for subject in (1, 2):
        image = nib.load(str(out / f"stack_{subject:03d}.nii.gz"))
        volume = np.asanyarray(image.dataobj)
        pngs = np.stack([np.asarray(Image.open(out / "keras_png_slices_generated" / f"case_{subject:03d}_slice_{k}.nii.png"))
                         for k in range(32)])  # fmt: skip
        expected, affine = stack_volume(pngs, pad=0)
        assert volume.shape == (64, 64, 32) and np.array_equal(volume, expected)  # the PNGs, in slice order
        assert np.allclose(image.affine, affine) and nib.aff2axcodes(image.affine) == ("A", "L", "S")
    again = cli("sample", "--run", str(stack_run), "--volumes", "2", "--out", str(tmp_path / "again"), "--seed", "3",
                *CHEAP, "--json")  # fmt: skip
    assert again.returncode == 0
    first = np.asanyarray(nib.load(str(out / "stack_002.nii.gz")).dataobj)
    assert np.array_equal(first, np.asanyarray(nib.load(str(tmp_path / "again" / "stack_002.nii.gz")).dataobj))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = cli("sample", "--run", str(stack_run), "--volumes", "1", "--out", str(foreign))
    assert refused.returncode != 0 and "did not make" in refused.stderr and "Traceback" not in refused.stderr


def test_sample_volumes_labels_each_stack_as_the_judge_segments_its_slices(
    stack_run: Path, trained_judge: Path, tmp_path: Path
) -> None:
    import nibabel as nib
    import numpy as np
    from PIL import Image

    out = tmp_path / "labelled"
    drawn = cli("sample", "--run", str(stack_run), "--volumes", "2", "--out", str(out), "--labels", str(trained_judge),
                *CHEAP, "--json")  # fmt: skip  # this test is about the labels
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert len(json.loads(drawn.stdout)["label_volumes"]) == 2
    segmented = cli("segment", "--judge", str(trained_judge), str(out / "keras_png_slices_generated"),
                    str(tmp_path / "segmented"))  # fmt: skip
    assert segmented.returncode == 0, segmented.stderr[-2000:]
    for subject in (1, 2):
        image = nib.load(str(out / f"stack_{subject:03d}_labels.nii.gz"))
        labels = np.asanyarray(image.dataobj)
        assert np.allclose(image.affine, nib.load(str(out / f"stack_{subject:03d}.nii.gz")).affine)
        assert set(np.unique(labels)) <= {0, 1, 2, 3} and len(np.unique(labels)) > 1
        for k in (0, 13, 31):
            mask = np.asarray(
                Image.open(out / "keras_png_slices_seg_generated" / f"seg_{subject:03d}_slice_{k}.nii.png")
            )
            segment = Image.open(tmp_path / "segmented" / f"case_{subject:03d}_slice_{k}.nii.png")
            assert np.array_equal(mask, np.asarray(segment))  # what brainvq segment says of the written slice
            assert np.array_equal(np.array([0, 85, 170, 255])[labels[:, :, k].T], mask)  # slice k of the volume
    scan = scan_split(out, "generated")  # images and masks pair up in the OASIS layout
    assert scan.has_masks and not scan.problems and len(scan.records) == 64
    assert all(record.mask_path is not None for record in scan.records)
    alone = cli("sample", "--run", str(stack_run), "--labels", str(trained_judge), "--out", str(tmp_path / "x"))
    assert alone.returncode != 0 and "--volumes" in alone.stderr and "Traceback" not in alone.stderr
    no_judge = cli("sample", "--run", str(stack_run), "--volumes", "1", "--labels", str(tmp_path / "nothing"),
                   "--out", str(tmp_path / "y"))  # fmt: skip
    assert no_judge.returncode != 0 and "nothing" in no_judge.stderr and "Traceback" not in no_judge.stderr
    assert not (tmp_path / "y").exists()
    one = ["sample", "--run", str(stack_run), "--volumes", "1", "--seed", "3", "--json"]
    plain = cli(*one, "--out", str(tmp_path / "plain"))  # the defaults, recorded as such
    cheap = cli(*one, *CHEAP, "--out", str(tmp_path / "cheap"))
    assert plain.returncode == 0 and cheap.returncode == 0, cheap.stderr[-2000:]
    record, defaults = json.loads(plain.stdout), brainvq.Config().sample
    assert record["coupling"] == defaults.stack_coupling
    assert record["sampling"]["top_map_temperature"] == defaults.stack_top_map_temperature  # the stack prior's own
    assert record["sampling"]["background_check"] is True and record["guidance"] == defaults.stack_guidance
    assert (record["candidates"], record["rivals"], record["first_map"]) == (
        defaults.stack_candidates, defaults.stack_rivals, defaults.stack_first_map)  # fmt: skip
    assert (defaults.stack_guidance, defaults.stack_candidates) != (0, 1)  # so the flags below change something
    assert json.loads(cheap.stdout)["guidance"] == 0 and json.loads(cheap.stdout)["candidates"] == 1
    volume = nib.load(str(tmp_path / "plain" / "stack_001.nii.gz")).get_fdata()
    assert not np.array_equal(volume, nib.load(str(tmp_path / "cheap" / "stack_001.nii.gz")).get_fdata())
    refusals = [(["--guidance", "1"], "--guidance"), (["--candidates", "2"], "--candidates"),
                (["--volumes", "1", "--guidance", "-1"], "--guidance"), (["--volumes", "1", "--candidates", "0"], "--candidates")]  # fmt: skip
    for bad, flag in refusals:
        refused = cli("sample", "--run", str(stack_run), *bad, "--out", str(tmp_path / "z"))
        assert refused.returncode != 0 and flag in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "z").exists()


def test_the_fast_stack_sampler_draws_what_the_naive_one_draws(stack_run: Path) -> None:
    """The stack prior's top maps, slice after slice, from a given first map, guided and the best of three
    candidates (the bottom maps are drawn by ``sample_codes``, whose fast sampler is checked against the
    naive one in tests/sampling)."""
    from brainvq.sampling.maps import Guide
    from brainvq.sampling.stacks import Selection, draw_stack_top_maps

    run = brainvq.load_run(stack_run, "cpu")
    prior, top = run.require_stack_prior(), run.require_top_prior()
    first = brainvq.sampling.sample_codes(top, 2, run.top_code_shape, condition=torch.zeros(2).long(), generator=9)
    drawn = {
        sampler: draw_stack_top_maps(
            prior,
            2,
            5,
            run.top_code_shape,
            generator=torch.Generator().manual_seed(1),
            sampler=sampler,
            temperature=1.0,
            guide=Guide(top, 1.0),
            first=first,
            selection=Selection(top, 3),
        )
        for sampler in ("fast", "naive")
    }
    assert drawn["fast"].codes.shape == (2, 5, 8, 8) and torch.equal(drawn["fast"].codes, drawn["naive"].codes)
    assert torch.equal(drawn["fast"].codes[:, 0], first)


def test_each_slice_keeps_the_candidate_the_top_prior_finds_likeliest(stack_run: Path) -> None:
    """Selection: candidates drawn given their own stack's previous map; the kept one has the lowest
    NLL under the independent top prior at the slice index (measured by the anomaly maps' own pass)."""
    from brainvq.anomaly.likelihood import top_nll_bits
    from brainvq.sampling.stacks import Selection, draw_stack_top_maps

    run = brainvq.load_run(stack_run, "cpu")
    prior, top, shape = run.require_stack_prior(), run.require_top_prior(), run.top_code_shape
    candidates = brainvq.sampling.sample_codes(top, 6, shape, condition=torch.full((6,), 7), generator=2,
                                               temperature=1.5)  # fmt: skip
    picked = Selection(top, 3).pick(candidates, 7)
    bits = top_nll_bits(run, candidates, torch.full((6,), 7)).mean((1, 2)).view(2, 3)  # (6, h, w) -> (2 stacks, 3)
    assert len(set(bits.flatten().tolist())) == 6  # distinct candidates, so the choice is a real one
    for stack in range(2):
        assert torch.equal(picked[stack], candidates[3 * stack + int(bits[stack].argmin())])
    # with rivals: the candidate whose own index is likeliest against indices 5 and 9
    nats = {k: -top_nll_bits(run, candidates, torch.full((6,), k)).sum((1, 2)) * math.log(2) for k in (5, 7, 9)}
    others = torch.logsumexp(torch.stack([nats[5], nats[7], nats[9]]), 0)
    posterior = (nats[7] - others).view(2, 3)  # (6,) -> (2 stacks, 3 candidates)
    by_index = Selection(top, 3, rivals=(-2, 2)).pick(candidates, 7)
    for stack in range(2):
        assert torch.equal(by_index[stack], candidates[3 * stack + int(posterior[stack].argmax())])
    # inside a stack: slice 1's candidates are drawn given that stack's slice 0, side by side
    first = candidates[[0, 3]]
    chained = draw_stack_top_maps(prior, 2, 2, shape, generator=torch.Generator().manual_seed(4), temperature=1.0,
                                  first=first, selection=Selection(top, 3)).codes  # fmt: skip
    expected = brainvq.sampling.sample_codes(prior, 6, shape, generator=torch.Generator().manual_seed(4),
                                             condition=torch.ones(6).long() if prior.config.condition_on_slice else None,
                                             context=first.repeat_interleave(3, 0), batch_size=6)  # fmt: skip
    assert torch.equal(chained[:, 1], Selection(top, 3).pick(expected, 1))


def test_slice_0_of_a_stack_is_drawn_as_a_single_slice_top_map(stack_run: Path) -> None:
    from brainvq.errors import RunError
    from brainvq.sampling.background import run_background
    from brainvq.sampling.maps import draw_top_maps
    from brainvq.sampling.settings import resolve_sampling
    from brainvq.sampling.stacks import sample_stacks

    run = brainvq.load_run(stack_run, "cpu")
    run.config.sample.top_map_temperature = 1.3  # single slices' top maps: another temperature than the stack's
    stacks = sample_stacks(run, 2, seed=5, first_map="top", candidates=2, guidance=0)  # guidance: not slice 0's
    single = resolve_sampling(run.config.sample, 2)
    assert stacks.first_map == "top" and stacks.candidates == 2
    assert (
        stacks.sampling.top_map_temperature
        == run.config.sample.stack_top_map_temperature
        != single.top_map_temperature
    )
    expected = draw_top_maps(run.require_top_prior(), 2, run.top_code_shape, run_background(run),
                             generator=torch.Generator().manual_seed(5), condition=torch.zeros(2).long(),
                             temperature=single.top_map_temperature, top_p=single.top_map_top_p)  # fmt: skip
    assert torch.equal(stacks.top_codes[:, 0], expected.codes)
    from_stack = sample_stacks(run, 2, seed=5, first_map="stack", candidates=2, guidance=0)
    assert not torch.equal(from_stack.top_codes[:, 0], expected.codes)
    single_candidate = sample_stacks(run, 1, seed=5, candidates=1, guidance=0, rivals=(-2, 2))
    assert single_candidate.rivals == ()  # no choice, no rivals
    with pytest.raises(RunError, match="first_map must be 'top' or 'stack'"):
        sample_stacks(run, 1, first_map="middle")


def test_a_slice_top_map_with_no_background_is_drawn_again_given_the_same_previous_map(stack_run: Path) -> None:
    """The background check inside a stack: flagged maps are redrawn before the next slice follows them,
    redrawn given their own previous map, and stacks with nothing flagged are the unchecked draw's."""
    from brainvq.sampling.background import Background, ring_agreement, ring_mask
    from brainvq.sampling.maps import redraw_generator
    from brainvq.sampling.stacks import draw_stack_top_maps

    run = brainvq.load_run(stack_run, "cpu")
    prior = run.require_stack_prior()
    shape, options = run.top_code_shape, {"temperature": 1.0, "batch_size": 6}
    plain = draw_stack_top_maps(prior, 6, 4, shape, generator=torch.Generator().manual_seed(3), **options).codes
    flat = plain.reshape(-1, *shape)  # (N, S, h, w) -> (N*S, h, w)
    ring = ring_mask(shape, 1)
    mode = flat.mode(0).values  # (N*S, h, w) -> (h, w)
    share = ring_agreement(flat, mode, ring)
    background = Background(mode, ring, share, limit=float(share.median()))  # flags about half of the maps
    flagged = background.flagged(flat).reshape(6, 4)  # (N*S,) -> (N, S)
    assert int(flagged.sum()) > 0 and not flagged.all(dim=1).all()
    checked = draw_stack_top_maps(prior, 6, 4, shape, generator=torch.Generator().manual_seed(3),
                                  background=background, **options)  # fmt: skip
    assert checked.redrawn >= int(flagged[:, 0].sum()) and checked.codes.shape == plain.shape
    resolved = ~background.flagged(checked.codes.reshape(-1, *shape)).reshape(6, 4)  # (N*S,) -> (N, S)
    assert int((~resolved).sum()) == checked.unresolved
    untouched = ~flagged.any(dim=1)  # stacks the check never redrew: exactly the unchecked draw
    assert torch.equal(checked.codes[untouched], plain[untouched])
    # slice 0's redraws: the first round is a draw given "no previous slice", from the redraw stream
    first = torch.nonzero(flagged[:, 0]).flatten()
    none = torch.full((len(first), *shape), int(prior.config.context_num_embeddings) - 1)
    expected = brainvq.sampling.sample_codes(prior, len(first), shape, condition=torch.zeros(len(first)).long() if prior.config.condition_on_slice else None,
                                             context=none, generator=redraw_generator(torch.Generator().manual_seed(3)),
                                             **options)  # fmt: skip
    passed = ~background.flagged(expected)
    assert torch.equal(checked.codes[first[passed], 0], expected[passed])


def test_the_pipeline_trains_the_stack_prior_and_draws_stacks_when_asked(
    two_level_run: Path, phantom_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_level_run, run)
    for path in (run / "checkpoints").glob("prior_top_reversed-*"):
        path.unlink()  # as the stacks preset: no reversed-order top prior, which stacks do not need
    budgets = ["train.max_steps=25", "prior_train.max_steps=15", "top_prior_train.max_steps=15", "sample.stacks=1",
               "sample.stack_candidates=1", "top_prior_train.reversed_prior=false"]  # fmt: skip
    sets = [part for item in [*TWO_LEVELS, *budgets] for part in ("--set", item)]
    done = cli("pipeline", "--data", str(phantom_root), "--run", str(run), *sets, "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(RunDir(run).checkpoint("prior_stack", "last"))["loop"]["step"] == 15
    assert RunDir(run).has_stage("prior_top") and not RunDir(run).has_stage("prior_top_reversed")
    record = json.loads((run / "samples" / "stacks" / "stacks.json").read_text())
    assert record["stacks"] == 1 and (run / "samples" / "stacks" / "stack_001.nii.gz").is_file()
    assert {"train-stack-prior", "sample-stacks"} <= set(
        json.loads((run / "pipeline.json").read_text())["completed"]
    )


def test_evaluate_samples_volumes_scores_drawn_and_written_stacks_alike(
    stack_run: Path, judge_data: Path, trained_judge: Path, tmp_path: Path
) -> None:
    from brainvq.config import apply_overrides, load_config, save_config

    run = tmp_path / "run"  # the run's own sampling settings draw the stacks: the cheap ones, in a copy
    shutil.copytree(stack_run, run)
    save_config(apply_overrides(load_config(run / "config.yaml"), ["sample.stack_candidates=1",
                                                                   "sample.stack_guidance=0"]), run / "config.yaml")  # fmt: skip
    common = ["evaluate-samples", "--volumes", "--judge", str(trained_judge), "--real", str(judge_data),
              "--split", "train", "--n", "2", "--seed", "0", "--json"]  # fmt: skip
    drawn = cli(*common, "--run", str(run), "--out", str(tmp_path / "drawn"))
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    result = json.loads(drawn.stdout)
    assert set(result["sets"]) == {"real (floor)", "shuffled real slices", "stack prior", "independent slices"}
    assert set(result["gap_closed"]) == {
        "adjacent_ssim_w",
        "tissue_curve_w",
        "tissue_curve_distance",
        "through_plane_w",
    }
    assert (tmp_path / "drawn" / "stacks_views.png").stat().st_size > 5000
    assert json.loads((tmp_path / "drawn" / "stack_scores.json").read_text())["sets"] == result["sets"]

    written = tmp_path / "written"
    assert cli("sample", "--run", str(run), "--volumes", "2", "--seed", "0", "--out", str(written)).returncode == 0
    scored = cli(*common, "--samples", str(written), "--run", str(run))
    assert scored.returncode == 0, scored.stderr[-2000:]
    from_folder = json.loads(scored.stdout)
    assert "stack prior" not in from_folder["sets"] and set(from_folder["gap_closed"]) == set(result["gap_closed"])
    folder, direct = from_folder["sets"]["samples"], result["sets"]["stack prior"]
    assert folder["adjacent_ssim_mean"] == pytest.approx(direct["adjacent_ssim_mean"], abs=0.01)  # 8-bit PNGs
    assert folder["tissue_roughness_mean"] == pytest.approx(direct["tissue_roughness_mean"], abs=0.01)
    assert from_folder["sets"]["independent slices"] == result["sets"]["independent slices"]


def test_a_stack_prior_of_two_context_slices_trains_samples_and_draws_each_slice_given_both(
    two_level_run: Path, tmp_path: Path
) -> None:
    """``--set top_prior.context_slices=[1,0]``: the stack prior reads slice k-1 and the stack's first
    slice (checkpointed in its config); each slice of a stack is the draw given those two ("no previous
    slice" for slice 0), fast == naive, and ``sample --volumes`` writes the stacks."""
    from brainvq.sampling.stacks import draw_stack_top_maps

    run = tmp_path / "run"
    shutil.copytree(two_level_run, run)
    trained = cli("train-prior", "--run", str(run), "--level", "stack", "--max-steps", "10", "--quiet",
                  "--set", "top_prior.context_slices=[1, 0]")  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert load_checkpoint(RunDir(run).checkpoint("prior_stack", "last"))["config"]["top_prior"][
        "context_slices"
    ] == [1, 0]
    loaded = brainvq.load_run(run, "cpu")
    prior, shape = loaded.require_stack_prior(), loaded.top_code_shape
    first = brainvq.sampling.sample_codes(loaded.require_top_prior(), 2, shape, condition=torch.zeros(2).long(),
                                          generator=9)  # fmt: skip
    drawn = {
        sampler: draw_stack_top_maps(
            prior,
            2,
            5,
            shape,
            generator=torch.Generator().manual_seed(1),
            first=first,
            sampler=sampler,
            temperature=1.0,
        )
        for sampler in ("fast", "naive")
    }
    assert torch.equal(drawn["fast"].codes, drawn["naive"].codes)
    generator, maps = torch.Generator().manual_seed(1), [first]
    for index in range(1, 5):
        context = torch.stack([maps[-1], maps[0]], 1)  # (N, 2, h, w): slice k-1, slice 0
        maps.append(brainvq.sampling.sample_codes(prior, 2, shape, generator=generator, temperature=1.0,
                                                  condition=torch.full((2,), index), context=context, batch_size=2))  # fmt: skip
    assert torch.equal(drawn["fast"].codes, torch.stack(maps, 1))
    out = tmp_path / "stacks"
    written = cli("sample", "--run", str(run), "--volumes", "1", "--out", str(out), "--candidates", "1", "--json")
    assert written.returncode == 0 and (out / "stack_001.nii.gz").is_file(), written.stderr[-2000:]
