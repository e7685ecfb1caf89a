import pytest
import torch

from brainvq.config import PriorConfig
from brainvq.models.layers import causal_mask
from brainvq.models.priors import build_prior

SIZE = 9


def _prior(arch: str, conditioned: bool, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    config = PriorConfig(
        arch=arch,
        embedding_dim=4,
        hidden_channels=8,
        num_layers=layers,
        condition_on_slice=conditioned,
        num_slices=4,
        positional=conditioned,
        code_height=SIZE,
        code_width=SIZE,
    )
    prior = build_prior(config, num_embeddings=5)
    for module in prior.modules():  # make conditional biases non-zero so they are exercised
        if module.__class__.__name__ == "ConditionalBias":
            torch.nn.init.normal_(module.embedding.weight)
    return prior.eval()


def test_masks() -> None:
    a, b = causal_mask(5, "A"), causal_mask(5, "B")
    assert a[2, 2] == 0 and b[2, 2] == 1
    assert a[:2].all() and b[:2].all() and not a[3:].any() and not b[3:].any()
    assert a[2, :2].all() and not a[2, 3:].any() and not b[2, 3:].any()


def _dependence(prior: torch.nn.Module, conditioned: bool, i: int, j: int) -> torch.Tensor:
    """|d logits(i, j) / d embedded input| per input position (SIZE, SIZE)."""
    codes = torch.randint(0, 5, (1, SIZE, SIZE))
    embedded = prior.embed(codes)
    leaf = (embedded[0] if isinstance(embedded, tuple) else embedded).detach().requires_grad_(True)
    state = (leaf, leaf) if isinstance(embedded, tuple) else leaf
    condition = torch.tensor([2]) if conditioned else None
    for stage, extra in zip(prior.stages, prior.extras(condition, None), strict=True):
        state = stage(state, extra)
    state[0, :, i, j].sum().backward()
    return leaf.grad.abs().sum(dim=(0, 1))


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
@pytest.mark.parametrize("conditioned", [False, True])
def test_causal_by_gradients(arch: str, conditioned: bool) -> None:
    prior = _prior(arch, conditioned)
    for i, j in [(0, 0), (4, 4), (4, 0), (8, 8), (3, 8)]:
        grad = _dependence(prior, conditioned, i, j)
        future = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        future.view(-1)[i * SIZE + j :] = True  # the position itself and every later one in raster order
        assert grad[future].abs().max() == 0, f"{arch}: logits at {(i, j)} see the present or future"
        if (i, j) != (0, 0):
            assert grad[~future].abs().sum() > 0


def _small_kernels(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = PriorConfig(
        arch=arch, embedding_dim=4, hidden_channels=8, num_layers=2, input_kernel_size=3, kernel_size=3
    )
    return build_prior(config, num_embeddings=5).eval()


def test_gated_has_no_blind_spot_and_seed_pixelcnn_does() -> None:
    i, j = 6, 4
    gated = _dependence(_small_kernels("gated"), False, i, j)
    seed = _dependence(_small_kernels("pixelcnn"), False, i, j)
    window = [(r, c) for r in range(i - 2, i + 1) for c in range(j - 2, j + 3) if (r, c) < (i, j)]
    assert all(gated[r, c] > 0 for r, c in window), "the gated prior must see every earlier position near it"
    # Stacked masked 3x3 convolutions never reach up-right along the row above: the blind spot.
    assert seed[i - 1, j + 2] == 0 and seed[i - 3, j + 3] > 0
    assert gated[i - 1, j + 2] > 0


def test_receptive_radius_bounds_dependence() -> None:
    for arch in ("pixelcnn", "gated"):
        prior = _prior(arch, False)
        grad = _dependence(prior, False, 8, 4)
        rows, cols = grad.nonzero(as_tuple=True)
        assert (8 - rows).max() <= prior.receptive_radius and (cols - 4).abs().max() <= prior.receptive_radius


def test_conditioning_changes_logits_and_is_required() -> None:
    prior = _prior("pixelcnn", True)
    codes = torch.randint(0, 5, (2, SIZE, SIZE))
    assert not torch.allclose(prior(codes, torch.tensor([0, 0])), prior(codes, torch.tensor([3, 3])))
    with pytest.raises(ValueError, match="conditioned on the slice index"):
        prior(codes)
