"""The transformer prior: causal by gradients, slice-conditioned, cached steps equal the full pass."""

import pytest
import torch

from brainvq.config import PriorConfig
from brainvq.models.priors import build_prior
from brainvq.models.transformer import TransformerPrior

SIZE = 6


def _prior(conditioned: bool = True, dropout: float = 0.0) -> TransformerPrior:
    torch.manual_seed(0)
    config = PriorConfig(
        arch="transformer", hidden_channels=32, num_layers=2, num_heads=4, dropout=dropout,
        condition_on_slice=conditioned, num_slices=8, code_height=SIZE, code_width=SIZE,
    )  # fmt: skip
    prior = build_prior(config, num_embeddings=10)
    assert isinstance(prior, TransformerPrior)
    return prior.eval()


@pytest.mark.parametrize("conditioned", [False, True])
def test_causal_by_gradients(conditioned: bool) -> None:
    prior = _prior(conditioned)
    codes = torch.randint(0, 10, (1, SIZE, SIZE))
    condition = torch.tensor([3]) if conditioned else None
    embedded = prior.token(codes.reshape(1, -1)).detach().requires_grad_(True)  # (1, T, C)
    # the forward pass with the token embeddings as a leaf (same computation as TransformerPrior.forward)
    x = torch.cat([prior._start(condition, 1), embedded[:, :-1]], 1) + prior.position.weight[: SIZE * SIZE]
    for block in prior.blocks:
        x = block(x)
    logits = prior.head(prior.ln_f(x))  # (1, T, K)
    torch.testing.assert_close(logits.transpose(1, 2).reshape(1, -1, SIZE, SIZE), prior(codes, condition))
    for position in (0, 1, 7, 20, SIZE * SIZE - 1):
        embedded.grad = None
        logits[0, position].sum().backward(retain_graph=True)
        grad = embedded.grad[0].abs().sum(1)  # (T,)
        assert grad[position:].max() == 0, f"logits at {position} see the present or future"
        if position > 0:
            assert grad[:position].sum() > 0


def test_weight_tying_and_slice_conditioning() -> None:
    prior = _prior()
    assert prior.head.weight is prior.token.weight
    codes = torch.randint(0, 10, (2, SIZE, SIZE))
    a, b = prior(codes, torch.tensor([1, 1])), prior(codes, torch.tensor([1, 6]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="slice"):
        prior(codes)


def test_cached_steps_equal_the_full_pass() -> None:
    prior = _prior()
    codes = torch.randint(0, 10, (3, SIZE, SIZE))
    condition = torch.tensor([0, 4, 7])
    with torch.no_grad():
        full = prior(codes, condition).reshape(3, 10, -1)  # (B, K, T)
        cache = prior.new_cache()
        flat = codes.reshape(3, -1)
        for t in range(SIZE * SIZE):
            torch.testing.assert_close(prior.step(flat, t, cache, condition), full[:, :, t], rtol=1e-5, atol=1e-5)
        cache = prior.new_cache()  # skipping positions: they are fed the next time
        for t in (0, 5, 6, 30):
            torch.testing.assert_close(prior.step(flat, t, cache, condition), full[:, :, t], rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training() -> None:
    prior = _prior(dropout=0.5)
    codes = torch.randint(0, 10, (2, SIZE, SIZE))
    condition = torch.tensor([1, 2])
    assert torch.equal(prior(codes, condition), prior(codes, condition))
    prior.train()
    assert not torch.equal(prior(codes, condition), prior(codes, condition))


def _stack_prior(mode: str, before: tuple[int, ...] = (1,)) -> TransformerPrior:
    torch.manual_seed(0)
    config = PriorConfig(
        arch="transformer", hidden_channels=32, num_layers=2, num_heads=4, condition_on_slice=True, num_slices=8,
        code_height=SIZE, code_width=SIZE, context_num_embeddings=11, context_mode=mode, context_slices=list(before),
    )  # fmt: skip
    prior = build_prior(config, num_embeddings=10)
    assert isinstance(prior, TransformerPrior)
    return prior.eval()


@pytest.mark.parametrize("mode", ["aligned", "prefix"])
def test_the_stack_prior_reads_the_previous_slice_and_nothing_later(mode: str) -> None:
    """Slice k's logits change with slice k-1's top map (the context); within slice k, position t
    sees only codes before t (by gradients); a context is required."""
    prior = _stack_prior(mode)
    codes = torch.randint(0, 10, (1, SIZE, SIZE))
    previous = torch.randint(0, 11, (1, SIZE, SIZE))
    condition = torch.tensor([3])
    changed = previous.clone()
    changed[0, SIZE - 1, SIZE - 1] = (changed[0, SIZE - 1, SIZE - 1] + 1) % 11  # the previous map's last code
    a, b = prior(codes, condition, previous), prior(codes, condition, changed)
    if mode == "prefix":  # the whole previous map is visible to every position, the first included
        assert not torch.allclose(a[..., 0, 0], b[..., 0, 0])
    else:  # aligned: only positions whose 3x3 neighbourhood holds the change
        assert torch.equal(a[..., 0, 0], b[..., 0, 0]) and not torch.allclose(a[..., -1, -1], b[..., -1, -1])
    embedded = prior.token(codes.reshape(1, -1)).detach().requires_grad_(True)  # (1, T, C)
    # the token embeddings as a leaf: a hook hands the same values back, differentiable
    hook = prior.token.register_forward_hook(lambda module, inputs, output: embedded[:, : output.shape[1]])
    try:
        logits = prior(codes, condition, previous).reshape(1, 10, -1)  # (1, K, T)
    finally:
        hook.remove()
    torch.testing.assert_close(logits, a.reshape(1, 10, -1))
    for position in (0, 1, 7, SIZE * SIZE - 1):
        embedded.grad = None
        logits[0, :, position].sum().backward(retain_graph=True)
        grad = embedded.grad[0].abs().sum(1) if embedded.grad is not None else torch.zeros(SIZE * SIZE)  # (T,)
        assert grad[position:].max() == 0, f"logits at {position} see the present or future"
    with pytest.raises(ValueError, match="context"):
        prior(codes, condition)


@pytest.mark.parametrize("mode", ["aligned", "prefix"])
def test_the_stack_priors_cached_steps_equal_the_full_pass(mode: str) -> None:
    prior = _stack_prior(mode)
    codes = torch.randint(0, 10, (3, SIZE, SIZE))
    previous = torch.randint(0, 11, (3, SIZE, SIZE))
    condition = torch.tensor([0, 4, 7])
    with torch.no_grad():
        full = prior(codes, condition, previous).reshape(3, 10, -1)  # (B, K, T)
        flat = codes.reshape(3, -1)
        cache = prior.new_cache()
        for t in range(SIZE * SIZE):
            step = prior.step(flat, t, cache, condition, previous)
            torch.testing.assert_close(step, full[:, :, t], rtol=1e-5, atol=1e-5)
        cache = prior.new_cache()
        for t in (0, 5, 6, 30):
            step = prior.step(flat, t, cache, condition, previous)
            torch.testing.assert_close(step, full[:, :, t], rtol=1e-5, atol=1e-5)


def test_a_stack_prior_of_two_maps_reads_both_in_their_places() -> None:
    """``context_slices`` [1, 2] (slices k-1 and k-2): slice k's logits change with either previous map near the change only (aligned),
    the two maps are not interchangeable, position t still sees only codes before t (by gradients), the
    cached steps equal the full pass, and the prefix mode refuses more than one map."""
    prior = _stack_prior("aligned", (1, 2))
    codes = torch.randint(0, 10, (2, SIZE, SIZE))
    previous = torch.randint(0, 11, (2, 2, SIZE, SIZE))  # (B, M, h, w): slices k-1 and k-2
    condition = torch.tensor([3, 5])
    with torch.no_grad():
        logits = prior(codes, condition, previous)
        for back in (0, 1):
            changed = previous.clone()
            changed[:, back, SIZE - 1, SIZE - 1] = (changed[:, back, SIZE - 1, SIZE - 1] + 1) % 11
            moved = prior(codes, condition, changed)
            assert torch.equal(logits[..., 0, 0], moved[..., 0, 0])
            assert not torch.allclose(logits[..., -1, -1], moved[..., -1, -1])
        assert not torch.allclose(logits, prior(codes, condition, previous.flip(1)))  # k-1 and k-2 swapped
    embedded = prior.token(codes.reshape(2, -1)).detach().requires_grad_(True)  # (B, T, C)
    hook = prior.token.register_forward_hook(lambda module, inputs, output: embedded[:, : output.shape[1]])
    try:
        traced = prior(codes, condition, previous).reshape(2, 10, -1)  # (B, K, T)
    finally:
        hook.remove()
    for position in (0, 7, SIZE * SIZE - 1):
        embedded.grad = None
        traced[:, :, position].sum().backward(retain_graph=True)
        grad = embedded.grad.abs().sum((0, 2)) if embedded.grad is not None else torch.zeros(SIZE * SIZE)  # (T,)
        assert grad[position:].max() == 0, f"logits at {position} see the present or future"
    with torch.no_grad():
        flat, cache, full = codes.reshape(2, -1), prior.new_cache(), logits.reshape(2, 10, -1)  # (B, T), (B, K, T)
        for t in range(SIZE * SIZE):
            step = prior.step(flat, t, cache, condition, previous)
            torch.testing.assert_close(step, full[:, :, t], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="context_slices"):
        _stack_prior("prefix", (1, 0))
