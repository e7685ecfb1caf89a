"""Opt-in checks on real OASIS slices ($BRAINVQ_OASIS or ../shared/oasis); skipped when absent."""

from __future__ import annotations

import pytest

from brainvq.data.checks import check_data
from brainvq.data.dataset import load_split
from tests.conftest import oasis_root

ROOT = oasis_root()
pytestmark = pytest.mark.skipif(ROOT is None, reason="no OASIS data ($BRAINVQ_OASIS or ../shared/oasis)")


def test_counts_and_no_problems() -> None:
    assert ROOT is not None
    report = check_data(ROOT)
    assert report["problems"] == []
    for split, summary in report["splits"].items():
        assert summary["images"] == 32 * summary["subjects"], split  # every subject has all 32 slices
        assert summary["image_size"] == [[256, 256]] and summary["dtype"] == ["uint8"]
        assert summary["slices_per_subject"] == {"min": 32, "max": 32}
    validate = report["splits"]["validate"]
    assert (validate["images"], validate["subjects"]) == (1120, 35)
    if "test" in report["splits"]:
        assert (report["splits"]["test"]["images"], report["splits"]["test"]["subjects"]) == (544, 17)


def test_masks_load_as_labels() -> None:
    assert ROOT is not None
    dataset = load_split(ROOT, "validate", with_masks=True, limit_images=4)
    item = dataset[2]
    assert item["image"].shape == (1, 256, 256)
    assert set(item["mask"].unique().tolist()) <= {0, 1, 2, 3} and item["mask"].max() == 3
