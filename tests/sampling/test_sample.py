"""The fast sampler must draw exactly the maps the naive sampler draws (same model, seed, temperature)."""

import pytest
import torch

from brainvq.config import PriorConfig
from brainvq.models.priors import build_prior
from brainvq.sampling import RowCache, draw, nucleus, sample_codes, slice_conditions, window_logits
from brainvq.sampling.draws import NUCLEUS_FIRST


def _prior(arch: str, conditioned: bool, size: int = 64) -> torch.nn.Module:
    torch.manual_seed(1)
    config = PriorConfig(
        arch=arch,
        embedding_dim=8,
        hidden_channels=16,
        num_layers=2,
        condition_on_slice=conditioned,
        num_slices=32,
        positional=conditioned,
        code_height=size,
        code_width=size,
    )
    prior = build_prior(config, num_embeddings=12)
    for module in prior.modules():
        if module.__class__.__name__ == "ConditionalBias":
            torch.nn.init.normal_(module.embedding.weight)
    return prior.eval()


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
@pytest.mark.parametrize("conditioned", [False, True])
def test_window_logits_equal_full_pass(arch: str, conditioned: bool) -> None:
    prior = _prior(arch, conditioned)
    codes = torch.randint(0, 12, (2, 16, 16))
    condition = torch.tensor([3, 30]) if conditioned else None
    with torch.no_grad():
        full = prior(codes, condition)
        for i, j in [(0, 0), (0, 15), (5, 0), (7, 9), (15, 15), (15, 2)]:
            torch.testing.assert_close(
                window_logits(prior, codes, i, j, condition), full[:, :, i, j], rtol=1e-5, atol=1e-5
            )


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
@pytest.mark.parametrize("conditioned", [False, True])
def test_row_cache_logits_equal_full_pass(arch: str, conditioned: bool) -> None:
    prior = _prior(arch, conditioned, size=16)
    codes = torch.randint(0, 12, (2, 10, 16))
    condition = torch.tensor([0, 31]) if conditioned else None
    with torch.no_grad():
        full = prior(codes, condition)
        cache = RowCache(prior, codes, condition)
        for i in range(10):
            for j in range(16):
                torch.testing.assert_close(cache.logits(i, j), full[:, :, i, j], rtol=1e-5, atol=1e-5)
            cache.finish_row(i)


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
@pytest.mark.parametrize("conditioned", [False, True])
def test_fast_sampler_equals_naive_quick(arch: str, conditioned: bool) -> None:
    prior = _prior(arch, conditioned)
    kwargs = {"generator": 7, "condition": torch.tensor([1, 9, 17]) if conditioned else None, "batch_size": 2}
    assert torch.equal(
        sample_codes(prior, 3, (12, 12), sampler="fast", **kwargs),
        sample_codes(prior, 3, (12, 12), sampler="naive", **kwargs),
    )


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "conditioned"), [("pixelcnn", False), ("gated", True)])
def test_fast_sampler_equals_naive_on_64x64_maps(arch: str, conditioned: bool) -> None:
    # two of the four pairings (the naive sampler takes over a minute per map pair here): both
    # architectures, with and without the slice condition; every pairing runs on 12x12 maps above
    prior = _prior(arch, conditioned)
    condition = torch.tensor([4, 20]) if conditioned else None
    kwargs = {"generator": 123, "temperature": 1.0, "condition": condition, "batch_size": 2}
    naive = sample_codes(prior, 2, (64, 64), sampler="naive", **kwargs)
    fast = sample_codes(prior, 2, (64, 64), sampler="fast", **kwargs)
    assert naive.shape == (2, 64, 64)
    assert torch.equal(fast, naive)
    assert len(naive.unique()) > 3  # a real draw, not a constant map


def test_seed_determinism_and_temperature() -> None:
    prior = _prior("gated", False)
    first = sample_codes(prior, 3, (8, 8), generator=5)
    assert torch.equal(first, sample_codes(prior, 3, (8, 8), generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(first, sample_codes(prior, 3, (8, 8), generator=6))
    greedy = sample_codes(prior, 2, (8, 8), generator=1, temperature=0.0)
    assert torch.equal(greedy, sample_codes(prior, 2, (8, 8), generator=2, temperature=0.0))


def test_draw_follows_the_distribution() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).repeat(20000, 1)
    counts = torch.bincount(draw(logits, 1.0, torch.Generator().manual_seed(0)), minlength=3).float() / 20000
    assert torch.allclose(counts, torch.tensor([0.7, 0.2, 0.1]), atol=0.015)
    sharp = torch.bincount(draw(logits, 0.25, torch.Generator().manual_seed(0)), minlength=3).float() / 20000
    assert sharp[0] > 0.95


def test_shared_noise_couples_rows_and_leaves_each_an_exact_draw() -> None:
    logits = torch.randn(6, 40)
    logits[3] = logits[2]  # two rows with one distribution
    coupled = draw(logits, 1.0, torch.Generator().manual_seed(3), coupling="shared")
    for row in range(6):  # each row is the draw a batch of that row alone makes: exact, not biased
        alone = draw(logits[row : row + 1], 1.0, torch.Generator().manual_seed(3))
        assert int(coupled[row]) == int(alone[0])
    assert int(coupled[2]) == int(coupled[3])  # equal distributions, equal codes
    same = torch.zeros(8, 64)  # eight uniform rows: independent noise splits them, shared noise never
    assert len(draw(same, 1.0, torch.Generator().manual_seed(0)).unique()) > 1
    assert len(draw(same, 1.0, torch.Generator().manual_seed(0), coupling="shared").unique()) == 1
    marginal = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    counts = torch.stack([draw(marginal.repeat(2, 1), 1.0, torch.Generator().manual_seed(s), coupling="shared")
                          for s in range(4000)])  # fmt: skip
    assert torch.allclose(
        torch.bincount(counts[:, 1], minlength=3) / 4000.0, torch.tensor([0.7, 0.2, 0.1]), atol=0.03
    )


def test_a_chain_coupling_keeps_every_row_exact_and_agrees_as_often_as_any_coupling_can() -> None:
    """Row r of a chain keeps row r-1's code with probability min(1, p_r/p_{r-1}): each row's codes follow
    its own distribution, neighbours agree with probability 1 - TV (the most any coupling allows, and
    more than shared noise), rows with one distribution always agree, and a nucleus is respected."""
    torch.manual_seed(0)
    logits = torch.randn(4, 6) * 1.5
    logits[1] = logits[0] + 0.5 * torch.randn(6)  # close to row 0
    logits[3] = logits[2]  # the same distribution as row 2
    probs = torch.softmax(logits, 1)
    generator, shared_generator = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    chained = torch.stack([draw(logits, 1.0, generator, coupling="chain") for _ in range(20000)])
    shared = torch.stack([draw(logits, 1.0, shared_generator, coupling="shared") for _ in range(20000)])
    for row in range(4):
        frequencies = torch.bincount(chained[:, row], minlength=6).float() / 20000
        assert torch.allclose(frequencies, probs[row], atol=0.012)
    for row in (1, 2):
        most = 1 - 0.5 * float((probs[row] - probs[row - 1]).abs().sum())
        agree = float((chained[:, row] == chained[:, row - 1]).float().mean())
        assert abs(agree - most) < 0.012 and agree > float((shared[:, row] == shared[:, row - 1]).float().mean())
    assert torch.equal(chained[:, 3], chained[:, 2])
    nucleus_draws = torch.stack([draw(logits, 1.0, generator, 0.5, "chain") for _ in range(500)])
    for row in range(4):
        assert torch.isfinite(nucleus(logits[row : row + 1], 0.5))[0, nucleus_draws[:, row]].all()
    with pytest.raises(ValueError, match="coupling"):
        draw(logits, 1.0, generator, coupling="tied")


def test_slice_conditions() -> None:
    conditioned, plain = _prior("pixelcnn", True), _prior("pixelcnn", False)
    assert slice_conditions(4, conditioned, 16).tolist() == [16] * 4
    spread = slice_conditions(5, conditioned, None)
    assert spread.tolist() == sorted(spread.tolist()) and spread.min() >= 0 and spread.max() <= 31
    assert slice_conditions(3, plain, None) is None
    with pytest.raises(Exception, match="condition_on_slice"):
        slice_conditions(3, plain, 4)
    with pytest.raises(Exception, match="--slice: slice index 40, outside 0..31"):
        slice_conditions(3, conditioned, 40)
    assert slice_conditions(3, conditioned, [0, 31, 7]).tolist() == [0, 31, 7]  # one per sample
    with pytest.raises(Exception, match="2 slice indices for 3 samples"):
        slice_conditions(3, conditioned, [0, 31])
    with pytest.raises(Exception, match="slice index 32, outside"):
        slice_conditions(2, conditioned, torch.tensor([0, 32]))


@pytest.mark.slow
def test_samplers_agree_at_trained_scale(tmp_path: object) -> None:
    """A prior trained for 300 steps (batch 16) has peaky logits, where float rounding between the
    full pass and the row cache could flip near-ties: count how many positions of full 32x32 maps
    differ between the naive and the fast sampler (issue 9: "the same maps" holds up to rounding)."""
    from pathlib import Path

    import numpy as np

    from brainvq.data.dataset import load_split
    from brainvq.data.phantom import make_phantom

    root = Path(str(tmp_path)) / "phantom"
    make_phantom(root, num_subjects=4, seed=5, size=128, num_slices=16)
    images = load_split(root, "train").images(list(range(32)))
    # stand-in code maps with real structure: 4x4-pooled phantom intensities in 32 levels (32x32 maps)
    codes = (torch.nn.functional.avg_pool2d(images, 4)[:, 0] * 31.99).long()  # (N, 1, 128, 128) -> (N, 32, 32)
    torch.manual_seed(0)
    config = PriorConfig(
        hidden_channels=64, embedding_dim=32, num_layers=4, positional=True, code_height=32, code_width=32
    )
    prior = build_prior(config, 32)
    optimizer = torch.optim.Adam(prior.parameters(), lr=2e-3)
    for step in range(300):
        batch = codes[torch.randint(len(codes), (16,), generator=torch.Generator().manual_seed(step))]
        loss = torch.nn.functional.cross_entropy(prior(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 1.5  # trained: the logits are confident
    # 8 maps (8,192 positions): enough to see flips at the 1 % bound, half the naive sampler's time of 16
    naive = sample_codes(prior, 8, (32, 32), generator=7, sampler="naive", batch_size=8)
    fast = sample_codes(prior, 8, (32, 32), generator=7, sampler="fast", batch_size=8)
    differing = float((naive != fast).float().mean())
    print(f"naive vs fast at trained scale: {differing:.4%} of {naive.numel()} positions differ")
    assert differing <= 0.01
    assert np.isfinite(differing)


# ----------------------------------------------------------------------------- two levels (issue 11)
def _conditioned_bottom(arch: str, size: int = 16) -> torch.nn.Module:
    torch.manual_seed(2)
    config = PriorConfig(
        arch=arch, embedding_dim=8, hidden_channels=16, num_layers=2, condition_on_slice=True,
        positional=True, code_height=size, code_width=size,
        context_num_embeddings=6, context_channels=8, context_factor=2,
    )  # fmt: skip
    prior = build_prior(config, num_embeddings=12)
    for module in prior.modules():
        if module.__class__.__name__ == "ConditionalBias":
            torch.nn.init.normal_(module.embedding.weight)
    return prior.eval()


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
def test_conditioned_bottom_prior_caches_equal_full_pass(arch: str) -> None:
    prior = _conditioned_bottom(arch)
    codes, top = torch.randint(0, 12, (2, 16, 16)), torch.randint(0, 6, (2, 8, 8))
    condition = torch.tensor([2, 30])
    with torch.no_grad():
        full = prior(codes, condition, top)
        other = prior(codes, condition, (top + 1) % 6)
        assert not torch.allclose(full, other)  # the top map conditions every position
        cache = RowCache(prior, codes, condition, top)
        for i in range(16):
            for j in range(16):
                torch.testing.assert_close(cache.logits(i, j), full[:, :, i, j], rtol=1e-5, atol=1e-5)
            cache.finish_row(i)
        for i, j in [(0, 0), (5, 9), (15, 15), (15, 0)]:
            torch.testing.assert_close(
                window_logits(prior, codes, i, j, condition, top), full[:, :, i, j], rtol=1e-5, atol=1e-5
            )
    with pytest.raises(ValueError, match="top code map"):
        prior(codes, condition)


def test_nucleus_keeps_the_smallest_set_that_reaches_top_p() -> None:
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.25, 0.25, 0.25, 0.25]]))
    assert torch.isfinite(nucleus(logits, 0.8)).tolist() == [[False, True, False, True], [True, True, True, True]]
    assert torch.isfinite(nucleus(logits, 0.5)).tolist()[0] == [False, True, False, False]  # 0.5 reaches 0.5
    assert torch.isfinite(nucleus(logits, 0.01)).sum(1).tolist() == [1, 1]  # the most likely code stays
    assert torch.equal(nucleus(logits, 1.0), logits)
    many = logits[:1].repeat(20000, 1)
    drawn = torch.bincount(draw(many, 1.0, torch.Generator().manual_seed(0), top_p=0.8), minlength=4) / 20000
    assert drawn[0] == 0 and drawn[2] == 0  # never outside the nucleus
    assert torch.allclose(drawn[[1, 3]], torch.tensor([0.5 / 0.8, 0.3 / 0.8]), atol=0.015)  # renormalised


def _nucleus_by_full_sort(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    probs = torch.softmax(logits.float(), dim=1)
    sorted_probs, order = probs.sort(dim=1, descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(
        1, order, sorted_probs.cumsum(1) - sorted_probs < top_p
    )
    return logits.float().masked_fill(~keep, float("-inf"))


@pytest.mark.parametrize("sharpness", [0.5, 3.0, 8.0])
def test_nucleus_sorting_the_largest_codes_first_keeps_the_same_codes(sharpness: float) -> None:
    # flat logits need more than NUCLEUS_FIRST codes (the full sort), peaked ones fewer; a batch mixes both
    logits = torch.randn(32, 512, generator=torch.Generator().manual_seed(1)) * sharpness
    logits[:4] *= 0.01  # nearly flat rows force the full sort for the whole batch
    for top_p in (0.3, 0.7, 0.95):
        assert torch.equal(nucleus(logits, top_p), _nucleus_by_full_sort(logits, top_p))
        assert torch.equal(nucleus(logits[4:], top_p), _nucleus_by_full_sort(logits[4:], top_p))
    inside = torch.isfinite(nucleus(logits[4:], 0.7)).sum(1)
    assert bool((inside <= NUCLEUS_FIRST).all()) == (sharpness > 1)  # both paths are tested


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
def test_conditioned_bottom_fast_sampler_equals_naive(arch: str) -> None:
    prior = _conditioned_bottom(arch)
    top = torch.randint(0, 6, (3, 8, 8))
    kwargs = {"generator": 5, "condition": torch.tensor([1, 9, 17]), "context": top, "batch_size": 2}
    fast = sample_codes(prior, 3, (16, 16), sampler="fast", **kwargs)
    assert torch.equal(fast, sample_codes(prior, 3, (16, 16), sampler="naive", **kwargs))
    assert len(fast.unique()) > 3
    nucleus_fast = sample_codes(prior, 3, (16, 16), sampler="fast", top_p=0.7, **kwargs)
    assert torch.equal(nucleus_fast, sample_codes(prior, 3, (16, 16), sampler="naive", top_p=0.7, **kwargs))
    assert not torch.equal(nucleus_fast, fast)
    shared = sample_codes(prior, 3, (16, 16), sampler="fast", coupling="shared", **kwargs)
    assert torch.equal(shared, sample_codes(prior, 3, (16, 16), sampler="naive", coupling="shared", **kwargs))
    alike = {"generator": 5, "condition": torch.tensor([9, 9]), "context": top[:1].repeat(2, 1, 1)}
    twins = sample_codes(prior, 2, (16, 16), coupling="shared", batch_size=2, **alike)
    assert torch.equal(twins[0], twins[1])  # the same distribution everywhere: the same map
    assert not torch.equal(*sample_codes(prior, 2, (16, 16), batch_size=2, **alike))
    chained = sample_codes(prior, 3, (16, 16), sampler="fast", coupling="chain", **kwargs)
    assert torch.equal(chained, sample_codes(prior, 3, (16, 16), sampler="naive", coupling="chain", **kwargs))
    assert torch.equal(*sample_codes(prior, 2, (16, 16), coupling="chain", batch_size=2, **alike))


def test_transformer_cached_sampler_equals_uncached() -> None:
    torch.manual_seed(3)
    config = PriorConfig(
        arch="transformer", hidden_channels=32, num_layers=2, num_heads=4, condition_on_slice=True,
        code_height=8, code_width=8,
    )  # fmt: skip
    prior = build_prior(config, num_embeddings=12).eval()
    kwargs = {"generator": 11, "condition": torch.tensor([0, 12, 31]), "batch_size": 2}
    cached = sample_codes(prior, 3, (8, 8), sampler="fast", **kwargs)
    assert torch.equal(cached, sample_codes(prior, 3, (8, 8), sampler="naive", **kwargs))
    assert len(cached.unique()) > 3
    # completion from a prefix (the cache is fed the kept positions the first time it is asked)
    keep = torch.zeros(3, 8, 8, dtype=torch.bool)
    keep[:, 3:] = True
    from brainvq.sampling import resample_codes

    fast = resample_codes(prior, cached, keep, generator=4, condition=kwargs["condition"], sampler="fast")
    naive = resample_codes(prior, cached, keep, generator=4, condition=kwargs["condition"], sampler="naive")
    assert torch.equal(fast, naive) and torch.equal(fast[:, :3], cached[:, :3])


def test_a_guided_draw_is_the_product_of_the_two_priors_and_the_fast_sampler_draws_it_exactly() -> None:
    """``Guide``: codes drawn from p * q^weight, renormalised; fast == naive with a context-reading prior
    guided by a context-free one (the stack prior and the top prior); weight 0 is no guide."""
    from brainvq.sampling.maps import Guide

    torch.manual_seed(3)
    base = {"arch": "transformer", "hidden_channels": 32, "num_layers": 2, "num_heads": 4, "code_height": 8,
            "code_width": 8, "condition_on_slice": True}  # fmt: skip
    guide_prior = build_prior(PriorConfig(**base), num_embeddings=12).eval()
    stack_prior = build_prior(PriorConfig(**base, context_num_embeddings=13), num_embeddings=12).eval()
    product = Guide(guide_prior, 1.0).combine(
        torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.9, 0.1]]))
    )
    assert torch.allclose(product.softmax(1), torch.tensor([[0.9, 0.1]]))
    squared = Guide(guide_prior, 2.0).combine(torch.zeros(1, 2), torch.log(torch.tensor([[0.75, 0.25]])))
    assert torch.allclose(squared.softmax(1), torch.tensor([[0.9, 0.1]]))  # 0.75^2 : 0.25^2
    kwargs = {"generator": 11, "condition": torch.tensor([0, 12, 31]), "batch_size": 2,
              "context": torch.randint(0, 13, (3, 8, 8))}  # fmt: skip
    guided = sample_codes(stack_prior, 3, (8, 8), sampler="fast", guide=Guide(guide_prior, 0.7), **kwargs)
    assert torch.equal(guided, sample_codes(stack_prior, 3, (8, 8), sampler="naive", guide=Guide(guide_prior, 0.7),
                                            **kwargs))  # fmt: skip
    plain = sample_codes(stack_prior, 3, (8, 8), **kwargs)
    assert not torch.equal(guided, plain)
    assert torch.equal(plain, sample_codes(stack_prior, 3, (8, 8), guide=Guide(guide_prior, 0.0), **kwargs))


def test_resolve_sampling_gives_the_top_map_its_own_settings_or_the_bottoms() -> None:
    from brainvq.config import SampleConfig
    from brainvq.errors import RunError
    from brainvq.sampling import Sampling, describe_sampling, resolve_sampling
    from brainvq.sampling.files import realism_suffix, sampling_suffix

    plain = SampleConfig()
    assert resolve_sampling(plain, 1) == Sampling(1.0, 1.0, None, None)
    assert resolve_sampling(plain, 2, top_p=0.9) == Sampling(1.0, 0.9, 1.0, 0.9, True)  # the top map follows
    assert resolve_sampling(plain, 2, top_p=0.9, top_map_top_p=1.0) == Sampling(1.0, 0.9, 1.0, 1.0, True)
    preset = SampleConfig(top_p=0.9, top_map_top_p=1.0, top_map_temperature=0.8, top_map_background_check=False)
    assert resolve_sampling(preset, 2) == Sampling(1.0, 0.9, 0.8, 1.0, False)
    assert resolve_sampling(preset, 2, top_p=0.5, top_map_top_p=0.7, background_check=True) == Sampling(
        1.0, 0.5, 0.8, 0.7, True
    )
    assert resolve_sampling(plain, 2, background_check=False).background_check is False
    assert resolve_sampling(preset, 1) == Sampling(1.0, 0.9, None, None)  # the config's top-map keys: ignored
    for bad, message in (
        ({"top_map_top_p": 0.0}, "top_map_top_p must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"top_map_temperature": -1.0}, "top_map_temperature must be >= 0"),
    ):
        with pytest.raises(RunError, match=message.replace("(", r"\(").replace("]", r"\]")):
            resolve_sampling(plain, 2, **bad)
    for two_level_only in ({"top_map_top_p": 0.9}, {"background_check": False}):
        with pytest.raises(RunError, match="need a two-level run"):
            resolve_sampling(plain, 1, **two_level_only)
    # file names and titles mark the top map only where it differs from the bottom
    assert sampling_suffix(Sampling(1.0, 1.0, 1.0, 1.0)) == "" == sampling_suffix(Sampling(1.0, 1.0))
    assert sampling_suffix(Sampling(0.8, 0.9, 0.8, 0.9)) == "_T0.8_p0.9"
    assert sampling_suffix(Sampling(1.0, 0.9, 0.7, 1.0)) == "_p0.9_topT0.7_topp1"
    assert realism_suffix(1, Sampling(1.0, 0.9, 1.0, 1.0)) == "_seed1_p0.9_topp1"
    assert sampling_suffix(Sampling(1.0, 1.0, 1.0, 1.0, True)) == ""  # the check is the default ...
    assert sampling_suffix(Sampling(1.0, 0.9, 1.0, 1.0, False)) == "_p0.9_topp1_nocheck"  # ... its absence marked
    assert describe_sampling(Sampling(1.0, 1.0, 1.0, 1.0, False)) == "T=1; top map no background check"
    assert describe_sampling(Sampling(1.0, 0.9, 1.0, 1.0)) == "T=1, top-p 0.9; top map top-p 1"
    assert describe_sampling(Sampling(0.8, 1.0)) == "T=0.8"
