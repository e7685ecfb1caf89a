import pytest
import torch

from brainvq.config import ModelConfig
from brainvq.models.vqvae import VQVAE


def _model(**kwargs: object) -> VQVAE:
    config = ModelConfig(
        hidden_channels=16, residual_hidden_channels=8, embedding_dim=8, num_embeddings=32, **kwargs
    )  # type: ignore[arg-type]
    return VQVAE(config)


@pytest.mark.parametrize("downsample", [4, 8])
def test_shapes(downsample: int) -> None:
    model = _model(downsample=downsample)
    x = torch.rand(2, 1, 64, 64)
    output = model(x)
    assert output.recon.shape == x.shape and output.indices.shape == (2, 64 // downsample, 64 // downsample)
    assert output.indices.dtype == torch.int64
    assert output.recon.min() >= 0.0 and output.recon.max() <= 1.0
    assert model.code_shape((64, 64)) == (64 // downsample, 64 // downsample)


def test_default_is_the_seed_architecture() -> None:
    model = VQVAE()
    assert [conv.stride for conv in model.encoder.down] == [(2, 2), (2, 2)]
    assert [conv.kernel_size for conv in model.encoder.down] == [(4, 4), (4, 4)]
    assert len(model.encoder.residual.blocks) == 2 and len(model.decoder.residual.blocks) == 2
    assert model.encoder.project.out_channels == 64 and model.quantizer.num_embeddings == 512
    assert model(torch.rand(1, 1, 256, 256)).indices.shape == (1, 64, 64)


@pytest.mark.parametrize("output", ["clamp", "sigmoid"])
def test_decode_of_encode_equals_forward_in_eval(output: str) -> None:
    torch.manual_seed(0)
    model = _model(output=output)
    model.train()
    model(torch.rand(4, 1, 32, 32))  # initialise the codebook from data
    model.eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        forward = model(x)
    codes = model.encode(x)  # one return type for one level and two: Codes(bottom, top=None)
    assert torch.equal(codes.bottom, forward.indices) and codes.top is None
    assert torch.equal(model.decode(model.encode(x)), forward.recon)


def test_bad_downsample_and_sizes() -> None:
    with pytest.raises(ValueError, match="power of two"):
        _model(downsample=3)
    with pytest.raises(ValueError, match="not divisible"):
        _model().code_shape((30, 32))


# ----------------------------------------------------------------------------- two levels (issue 11)
def _two_level(top_downsample: int = 2, **kwargs: object) -> torch.nn.Module:
    from brainvq.models.vqvae import build_vqvae

    config = ModelConfig(
        hidden_channels=16, residual_hidden_channels=8, embedding_dim=8, num_embeddings=32,
        levels=2, top_downsample=top_downsample, top_num_embeddings=16, **kwargs,
    )  # type: ignore[arg-type]  # fmt: skip
    return build_vqvae(config)


@pytest.mark.parametrize("top_downsample", [2, 4])
def test_two_level_shapes(top_downsample: int) -> None:
    model = _two_level(top_downsample)
    output = model(torch.rand(2, 1, 64, 64))
    assert output.recon.shape == (2, 1, 64, 64) and output.indices.shape == (2, 16, 16)
    assert output.top_indices is not None and output.top_indices.shape == (
        2,
        16 // top_downsample,
        16 // top_downsample,
    )
    assert output.top_counts is not None and output.top_counts.shape == (16,)
    assert model.code_shape((64, 64)) == (16, 16)
    assert model.top_code_shape((64, 64)) == (16 // top_downsample, 16 // top_downsample)
    with pytest.raises(ValueError, match="divisible"):
        model.code_shape((64, 60))


@pytest.mark.parametrize(
    ("output", "bottom_dropout", "bottom_corruption"),
    [("clamp", 0.0, 0.0), ("sigmoid", 0.0, 0.0), ("clamp", 0.5, 0.0), ("clamp", 0.5, 0.2)],
)
def test_two_level_decode_of_encode_equals_forward_in_eval(
    output: str, bottom_dropout: float, bottom_corruption: float
) -> None:
    torch.manual_seed(0)
    model = _two_level(output=output, bottom_dropout=bottom_dropout, bottom_corruption=bottom_corruption)
    model.train()
    model(torch.rand(4, 1, 32, 32))  # initialise both codebooks from data
    model.eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        forward = model(x)
    codes = model.encode(x)
    assert torch.equal(codes.bottom, forward.indices) and torch.equal(codes.top, forward.top_indices)
    torch.testing.assert_close(model.decode(codes), forward.recon, rtol=0, atol=1e-6)


def test_the_decoder_reads_both_levels_and_the_bottom_sees_the_top() -> None:
    torch.manual_seed(0)
    model = _two_level()
    model.train()
    model(torch.rand(4, 1, 32, 32))
    model.eval()
    codes = model.encode(torch.rand(2, 1, 32, 32))
    other_top = (codes.top + 1) % 16
    changed = model.decode(type(codes)(codes.bottom, other_top))
    assert not torch.allclose(changed, model.decode(codes))  # the top map reaches the image
    # gradients: the bottom quantiser's input depends on the top encoder's output
    x = torch.rand(1, 1, 32, 32)
    features = model.encoder.features(x)
    top = model.top_quantizer(model.top_encoder(features))
    z = model.encoder.project(torch.cat([features, model.top_decoder(top.quantized)], 1))
    z.sum().backward()
    assert model.top_decoder.up[0].weight.grad is not None and model.top_decoder.up[0].weight.grad.abs().sum() > 0


def test_bottom_dropout_makes_some_training_images_decode_from_the_top_alone() -> None:
    torch.manual_seed(0)
    model = _two_level(bottom_dropout=0.5)
    model.train()
    x = torch.rand(64, 1, 32, 32)
    model(x[:4])  # initialise both codebooks
    model.quantizer.decay = model.top_quantizer.decay = 1.0  # freeze the codebooks for the check
    torch.manual_seed(1)
    out = model(x)
    codes = model.encode(x)
    top_only = model.decode_top(codes.top)
    both = model.decode(codes)
    dropped = (out.recon - top_only).flatten(1).abs().amax(1) < 1e-5
    kept = (out.recon - both).flatten(1).abs().amax(1) < 1e-5
    assert bool((dropped ^ kept).all())  # each image took exactly one path
    assert 16 < int(dropped.sum()) < 48  # about half of 64 dropped
    assert out.kept is not None and torch.equal(out.kept, kept)  # the output says which path each took
    model.eval()
    kept_in_eval = model(x[:4]).kept
    assert kept_in_eval is not None and bool(kept_in_eval.all())


def test_bottom_corruption_swaps_that_fraction_of_bottom_codes_for_codebook_entries_in_training() -> None:
    torch.manual_seed(0)
    model = _two_level(bottom_corruption=0.25)
    model.train()
    model(torch.rand(4, 1, 32, 32))  # initialise both codebooks
    bottom = model.quantizer.lookup(torch.randint(32, (64, 8, 8)))  # (B, D, h, w)
    corrupted = model._corrupt(bottom)
    swapped = (corrupted != bottom).any(1)  # (B, h, w)
    assert 0.2 < swapped.float().mean() < 0.3
    codebook = model.quantizer.lookup(torch.arange(32)[:, None, None])[:, :, 0, 0]  # (K, D)
    vectors = corrupted.permute(0, 2, 3, 1)[swapped]  # (S, D)
    assert bool((vectors[:, None] == codebook[None]).all(2).any(1).all())  # every swapped vector is a code
    model.eval()
    assert torch.equal(model._corrupt(bottom), bottom)  # nothing changes in eval
