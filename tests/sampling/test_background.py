"""The background check of two-level sampling: which top maps it flags, and that redrawing them
changes those samples only, keeps every seed reproducible and leaves fast == naive."""

from __future__ import annotations

import pytest
import torch

from brainvq.config import PriorConfig
from brainvq.errors import RunError
from brainvq.models import build_prior
from brainvq.sampling import draw_top_maps, sample_codes
from brainvq.sampling.background import Background, ring_agreement, ring_mask


def test_ring_mask_and_the_reference_of_real_maps() -> None:
    ring = ring_mask((6, 5), 1)
    assert int(ring.sum()) == 6 * 5 - 4 * 3 and not ring[1:-1, 1:-1].any()
    assert ring_mask((4, 4), 3).all()  # a ring wider than half the map is all of it
    assert int(Background.of(torch.zeros(2, 16, 16, dtype=torch.long)).ring.sum()) == 16 * 16 - 10 * 10  # 3 cells
    assert int(Background.of(torch.zeros(2, 8, 8, dtype=torch.long)).ring.sum()) == 8 * 8 - 4 * 4  # 2 cells
    real = torch.randint(1, 7, (50, 8, 8))
    real[:, ring_mask((8, 8), 2)] = 0  # real maps: background (code 0) all round ...
    real[:5, 0, :4] = 3  # ... but for a few with something on the edge
    background = Background.of(real, width=2, margin=0.05)
    assert torch.equal(background.mode[0, :], torch.zeros(8, dtype=torch.long))
    assert background.limit == pytest.approx(1 - 4 / 48 - 0.05)
    assert not background.flagged(real).any()  # the maps that set the reference pass it
    drawn = real[:4].clone()
    drawn[1, :3] = 5  # three rows of brain along the top edge: 24 of the 48 ring cells
    drawn[2, :, :] = 5  # brain everywhere
    assert background.flagged(drawn).tolist() == [False, True, True, False]
    assert ring_agreement(drawn[2:3], background.mode, background.ring).item() == 0.0
    with pytest.raises(RunError, match=r"top maps of shape \(4, 4\)"):
        background.flagged(torch.zeros(2, 4, 4, dtype=torch.long))


@pytest.fixture(scope="module")
def top_prior() -> torch.nn.Module:
    torch.manual_seed(5)
    config = PriorConfig(
        arch="transformer", hidden_channels=32, num_layers=2, num_heads=4, condition_on_slice=True,
        code_height=8, code_width=8,
    )  # fmt: skip
    return build_prior(config, num_embeddings=4).eval()


def _half_flagging() -> Background:
    """A reference that flags about half of this untrained prior's maps: background is code 0, and a
    map must hold it on a quarter of its ring (its four codes are about equally likely)."""
    mode = torch.zeros(8, 8, dtype=torch.long)
    return Background(mode, ring_mask((8, 8), 1), torch.ones(1), limit=0.25)


def test_redrawing_changes_the_flagged_maps_only_and_keeps_every_seed(top_prior: torch.nn.Module) -> None:
    background = _half_flagging()
    condition = torch.arange(12) % 32
    options = {"batch_size": 5, "condition": condition}
    plain = sample_codes(top_prior, 12, (8, 8), generator=torch.Generator().manual_seed(7), **options)
    flagged = background.flagged(plain)
    assert 0 < int(flagged.sum()) < 12  # the reference does flag some maps, not all
    generator = torch.Generator().manual_seed(7)
    checked = draw_top_maps(top_prior, 12, (8, 8), background, generator=generator, **options)
    assert checked.redrawn == int(flagged.sum()) and checked.unresolved == 0
    assert not background.flagged(checked.codes).any()
    assert torch.equal(checked.codes[~flagged], plain[~flagged])  # the rest are the plain draw's
    assert not torch.equal(checked.codes[flagged], plain[flagged])
    # the main generator runs on as without the check (the bottom maps draw from it next)
    after_plain = torch.Generator().manual_seed(7)
    sample_codes(top_prior, 12, (8, 8), generator=after_plain, **options)
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=after_plain))
    again = draw_top_maps(top_prior, 12, (8, 8), background, generator=torch.Generator().manual_seed(7), **options)
    naive = draw_top_maps(
        top_prior, 12, (8, 8), background, generator=torch.Generator().manual_seed(7), sampler="naive", **options
    )
    assert torch.equal(again.codes, checked.codes) and torch.equal(naive.codes, checked.codes)
    unchecked = draw_top_maps(top_prior, 12, (8, 8), None, generator=torch.Generator().manual_seed(7), **options)
    assert torch.equal(unchecked.codes, plain) and unchecked.redrawn == 0


def test_maps_that_never_pass_are_kept_and_counted(top_prior: torch.nn.Module) -> None:
    impossible = Background(torch.full((8, 8), 9), ring_mask((8, 8), 1), torch.ones(1), limit=0.5)  # code 9: none
    generator = torch.Generator().manual_seed(0)
    drawn = draw_top_maps(top_prior, 3, (8, 8), impossible, generator=generator, condition=torch.tensor([1, 2, 3]))
    assert drawn.unresolved == 3 and drawn.redrawn == 3
