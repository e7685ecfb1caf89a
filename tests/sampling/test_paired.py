"""Two transformer priors stepped as one (a guided draw): the same logits as two key/value samplers, the
same draws as the naive sampler, and only where the priors can be stacked."""

from __future__ import annotations

import pytest
import torch

from brainvq.config import PriorConfig
from brainvq.models.priors import build_prior
from brainvq.models.transformer import TransformerPrior
from brainvq.sampling.fast import KVSampler
from brainvq.sampling.maps import Guide, resample_codes, sample_codes
from brainvq.sampling.paired import PairedKVSampler, pairable, paired_sampler

SIZE, CODES = 5, 12


def _prior(seed: int, context: int | None = None, mode: str = "aligned", width: int = 32) -> TransformerPrior:
    torch.manual_seed(seed)
    config = PriorConfig(
        arch="transformer", hidden_channels=width, num_layers=2, num_heads=4, dropout=0.0, condition_on_slice=True,
        num_slices=8, code_height=SIZE, code_width=SIZE, context_num_embeddings=context, context_mode=mode,
    )  # fmt: skip
    prior = build_prior(config, num_embeddings=CODES)
    assert isinstance(prior, TransformerPrior)
    with torch.no_grad():  # non-trivial norms and biases, so a mixed-up half would show
        for name, parameter in prior.named_parameters():
            if "ln" in name or name.endswith("bias"):
                parameter.add_(torch.randn_like(parameter) * 0.3)
    return prior.eval()


@torch.no_grad()
def test_paired_steps_give_each_prior_its_own_logits() -> None:
    stack, top = _prior(0, context=CODES + 1), _prior(1)
    codes = torch.randint(0, CODES, (3, SIZE, SIZE))
    context = torch.randint(0, CODES + 1, (3, SIZE, SIZE))
    own, guide = torch.tensor([0, 3, 7]), torch.tensor([0, 3, 7])
    both = PairedKVSampler((stack, top), codes, (own, guide), context)
    apart = KVSampler(stack, codes, own, context), KVSampler(top, codes, guide, None)
    for i in range(SIZE):
        for j in range(SIZE):
            if (i, j) in ((1, 1), (1, 2), (3, 0)):  # positions skipped (kept codes) are fed with the next
                continue
            first, second = both.logits(i, j)
            torch.testing.assert_close(first, apart[0].logits(i, j), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(second, apart[1].logits(i, j), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(first, second, atol=1e-3)


@torch.no_grad()
def test_a_guided_draw_is_the_same_paired_and_naive() -> None:
    stack, top = _prior(0, context=CODES + 1), _prior(1)
    context = torch.randint(0, CODES + 1, (4, SIZE, SIZE))
    condition = torch.tensor([1, 2, 5, 6])
    options = dict(generator=3, condition=condition, context=context, temperature=1.0, guide=Guide(top, 0.5))
    fast = sample_codes(stack, 4, (SIZE, SIZE), sampler="fast", **options)  # type: ignore[arg-type]
    naive = sample_codes(stack, 4, (SIZE, SIZE), sampler="naive", **options)  # type: ignore[arg-type]
    assert torch.equal(fast, naive)
    unguided = sample_codes(stack, 4, (SIZE, SIZE), sampler="fast", **{**options, "guide": None})  # type: ignore[arg-type]
    assert not torch.equal(fast, unguided)
    keep = torch.zeros(4, SIZE, SIZE, dtype=torch.bool)
    keep[:, 2:] = True  # complete the last rows of the guided draw, given the first two
    completed = [resample_codes(stack, fast, keep, sampler=how, **options) for how in ("fast", "naive")]  # type: ignore[arg-type]
    assert torch.equal(completed[0], completed[1]) and torch.equal(completed[0][:, :2], fast[:, :2])


def test_only_priors_of_the_same_shape_without_a_prefix_pair() -> None:
    stack, top = _prior(0, context=CODES + 1), _prior(1)
    assert pairable(stack, top) and pairable(top, top)
    assert not pairable(top, stack)  # only the first may read a context map
    assert not pairable(_prior(0, context=CODES + 1, mode="prefix"), top)
    assert not pairable(stack, _prior(1, width=48))
    codes = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    assert paired_sampler((stack, _prior(1, width=48)), codes, (None, None), None) is None


@pytest.mark.parametrize("seed", [0, 1])
def test_the_pair_keeps_each_prior_apart_under_a_batch(seed: int) -> None:
    """Swapping the priors swaps the halves: nothing of one prior leaks into the other's logits."""
    one, two = _prior(seed), _prior(seed + 10)
    codes = torch.randint(0, CODES, (2, SIZE, SIZE))
    condition = torch.tensor([2, 4])
    with torch.no_grad():
        a = PairedKVSampler((one, two), codes, (condition, condition), None).logits(2, 3)
        b = PairedKVSampler((two, one), codes, (condition, condition), None).logits(2, 3)
    torch.testing.assert_close(a[0], b[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a[1], b[0], rtol=1e-4, atol=1e-5)
