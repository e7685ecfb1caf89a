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
    assert torch.equal(model.encode(x), forward.indices)
    assert torch.equal(model.decode(model.encode(x)), forward.recon)


def test_bad_downsample_and_sizes() -> None:
    with pytest.raises(ValueError, match="power of two"):
        _model(downsample=3)
    with pytest.raises(ValueError, match="not divisible"):
        _model().code_shape((30, 32))
