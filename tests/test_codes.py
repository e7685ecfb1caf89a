"""Code maps and the one slice-conditioning rule (issue 9.7)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brainvq.codes import CodeMaps, slice_condition
from brainvq.config import PriorConfig
from brainvq.errors import DataError, RunError
from brainvq.evaluation.metrics import evaluate_prior
from brainvq.models import build_prior


def test_slice_rule_accepts_the_range_and_refuses_the_rest() -> None:
    assert slice_condition(torch.tensor([0, 5, 31]), 32).tolist() == [0, 5, 31]
    with pytest.raises(DataError, match="slice index 32, outside 0..31"):
        slice_condition(torch.tensor([3, 32]), 32)
    with pytest.raises(DataError, match=r"slice index unknown \(-1\)"):
        slice_condition(torch.tensor([-1, 3]), 32)


def _codes(slices: list[int]) -> CodeMaps:
    indices = torch.randint(0, 8, (len(slices), 6, 6), dtype=torch.int16)
    return CodeMaps(
        indices, torch.zeros(len(slices), dtype=torch.long), torch.tensor(slices), "validate", 8, (24, 24)
    )


def test_evaluation_uses_the_same_rule_as_training() -> None:
    config = PriorConfig(embedding_dim=4, hidden_channels=8, condition_on_slice=True, num_slices=32)
    prior = build_prior(config, 8)
    metrics = evaluate_prior(prior, _codes([0, 31]), 4, conditioned=True)
    assert 0 <= metrics["prior_accuracy"] <= 1
    with pytest.raises(DataError, match="validate: slice index 40, outside 0..31"):
        evaluate_prior(prior, _codes([0, 40]), 4, conditioned=True)  # was an IndexError
    with pytest.raises(DataError, match=r"slice index unknown \(-1\)"):
        evaluate_prior(prior, _codes([-1, 3]), 4, conditioned=True)  # was silently slice 0


def test_training_refuses_out_of_range_slices(tiny_config: object, tmp_path: Path) -> None:
    from brainvq.config import apply_overrides
    from brainvq.training.tasks import PriorTask

    config = apply_overrides(tiny_config, ["prior.condition_on_slice=true", "prior.num_slices=16"])  # type: ignore[arg-type]
    with pytest.raises(DataError, match="slice index 31, outside 0..15"):
        PriorTask(config, config.prior_train, _codes([0, 31]), None)  # was clamped to 15


def test_code_maps_record_and_check_their_vqvae(tmp_path: Path) -> None:
    codes = _codes([0, 1])
    codes.vqvae_hash = "abc"
    codes.save(tmp_path / "c.pt")
    loaded = CodeMaps.load(tmp_path / "c.pt")
    assert loaded.vqvae_hash == "abc" and loaded.check_made_by("abc", tmp_path / "c.pt") is loaded
    with pytest.raises(RunError, match="stale code maps"):
        loaded.check_made_by("def", tmp_path / "c.pt")


def test_the_stack_level_gives_each_map_the_earlier_slices_of_its_own_subject() -> None:
    """``level("stack", context_slices)``: the context of slice k is slice k-n for each n above 0 and the
    subject's first slice for 0, the "no previous slice" code (the top codebook size) where there is
    none; one context slice gives (N, h, w), more (N, M, h, w)."""
    subjects = torch.tensor([1, 1, 1, 2, 2, 1])
    slices = torch.tensor([0, 1, 2, 0, 1, 3])
    top = torch.arange(6).view(6, 1, 1).expand(6, 2, 2).to(torch.int16)  # map i holds the code i
    codes = CodeMaps(top.clone(), subjects, slices, "train", 9, (8, 8), "h", top.clone(), 6)
    none = 6
    two = codes.level("stack", (1, 2))
    assert two.top_indices is not None and two.top_indices.shape == (6, 2, 2, 2)
    assert two.top_num_embeddings == 7 and torch.equal(two.indices, top)
    firsts = two.top_indices[:, :, 0, 0].tolist()  # (N, M): the code of slice k-1, then of k-2
    assert firsts == [[none, none], [0, none], [1, 0], [none, none], [3, none], [2, 1]]
    anchored = codes.level("stack", (1, 0))  # slice k-1, then the subject's first slice
    assert anchored.top_indices is not None
    assert anchored.top_indices[:, :, 0, 0].tolist() == [
        [none, none],
        [0, 0],
        [1, 0],
        [none, none],
        [3, 3],
        [2, 0],
    ]
    one = codes.level("stack")
    assert one.top_indices is not None and one.top_indices.shape == (6, 2, 2)
    assert one.top_indices[:, 0, 0].tolist() == [none, 0, 1, none, 3, 2]
