import pytest
import torch

from brainvq.models.quantizer import VectorQuantizer, kmeans_plus_plus


def _quantizer(**kwargs: object) -> VectorQuantizer:
    defaults: dict[str, object] = {
        "num_embeddings": 16,
        "embedding_dim": 4,
        "dead_code_steps": 0,
        "init": "uniform",
    }
    defaults.update(kwargs)
    return VectorQuantizer(**defaults)  # type: ignore[arg-type]


def test_nearest_matches_brute_force() -> None:
    torch.manual_seed(0)
    quantizer = _quantizer()
    quantizer.codebook.data = torch.randn(16, 4)
    z = torch.randn(2, 4, 5, 5)
    output = quantizer.eval()(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = torch.cdist(flat, quantizer.codebook).argmin(1).reshape(2, 5, 5)
    assert torch.equal(output.indices, expected)
    assert torch.allclose(output.quantized, quantizer.lookup(expected))
    assert torch.equal(quantizer.nearest(flat, chunk_size=7), expected.flatten())


def test_straight_through_and_losses() -> None:
    torch.manual_seed(0)
    quantizer = _quantizer(kind="loss", commitment_cost=0.25).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    output = quantizer(z)
    (output.quantized * 3.0).sum().backward()
    assert torch.allclose(z.grad, torch.full_like(z, 3.0))  # identity gradient through the quantiser
    commitment = ((z - quantizer.lookup(output.indices)) ** 2).mean()
    assert output.commitment_loss.item() == pytest.approx(commitment.item(), rel=1e-5)
    assert output.loss.item() == pytest.approx(output.codebook_loss.item() + 0.25 * commitment.item(), rel=1e-5)
    quantizer.zero_grad()
    quantizer(z).loss.backward()
    assert quantizer.codebook.grad is not None and quantizer.codebook.grad.abs().sum() > 0


def test_ema_moves_codes_toward_assigned_vectors() -> None:
    quantizer = _quantizer(kind="ema", decay=0.5, epsilon=1e-9).train()
    quantizer.codebook.copy_(torch.zeros(16, 4))
    quantizer.codebook[1] = 10.0
    quantizer.ema_embed_sum.copy_(quantizer.codebook)
    quantizer.ema_cluster_size.fill_(1.0)
    z = torch.full((1, 4, 1, 1), 8.0)
    for _ in range(20):
        quantizer(z)
    assert torch.allclose(quantizer.codebook[1], torch.full((4,), 8.0), atol=1e-3)


def test_data_initialisation_and_dead_code_restart() -> None:
    torch.manual_seed(0)
    z = torch.randn(4, 4, 8, 8) + 5.0
    for init in ("data", "kmeans++"):
        quantizer = _quantizer(init=init).train()
        assert not bool(quantizer.initialized)
        quantizer(z)
        assert bool(quantizer.initialized)
        assert quantizer.codebook.mean() > 3.0  # codes now live where the data is
    quantizer = _quantizer(init="uniform", dead_code_steps=2).train()
    quantizer.codebook.data[:] = -100.0
    quantizer.codebook.data[0] = 5.0  # one live code, fifteen far away
    usage = [int((quantizer(z).counts > 0).sum()) for _ in range(4)]
    assert usage[0] == 1 and usage[-1] > 8


def test_distances_stay_float32_under_autocast() -> None:
    quantizer = _quantizer().train()
    z = torch.randn(2, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = quantizer(z.bfloat16())
    assert output.quantized.dtype == torch.float32 and quantizer.codebook.dtype == torch.float32


def test_kmeans_plus_plus_spreads_centres() -> None:
    torch.manual_seed(0)
    clusters = torch.cat([torch.randn(200, 2) * 0.01 + torch.tensor(c) for c in ([0, 0], [9, 9], [-9, 9])])
    centres = kmeans_plus_plus(clusters, 3, torch.Generator().manual_seed(1))
    nearest = torch.cdist(centres, torch.tensor([[0.0, 0], [9, 9], [-9, 9]])).argmin(1)
    assert sorted(nearest.tolist()) == [0, 1, 2]


def test_ema_with_uniform_init_keeps_unused_codes_in_place() -> None:
    # issue 9.6: ema_cluster_size started at 0 while ema_embed_sum held the codebook, so one update
    # divided every unused code by ~1e-5 / N and flung it far away (dead forever)
    torch.manual_seed(0)
    quantizer = _quantizer(kind="ema", init="uniform", num_embeddings=64)
    before = quantizer.codebook.clone()
    quantizer.train()(0.01 * torch.randn(4, 4, 8, 8))
    used = torch.zeros(64, dtype=torch.bool)
    used[quantizer.eval()(0.01 * torch.randn(4, 4, 8, 8)).indices.unique()] = True
    moved = (quantizer.codebook - before).norm(dim=1)
    assert moved.max() < 0.05  # nothing is flung away; before the fix unused codes moved by ~1e3
    assert quantizer.codebook.abs().max() < 0.1


@pytest.mark.slow
def test_ema_uniform_init_keeps_every_code_within_reach_on_the_phantom(
    tmp_path: object, tiny_config: object
) -> None:
    """On the phantom, without restarts, no code is flung out of the data's range (before the fix
    every code unused in the first step ended up ~1e4 times farther out than any encoder output)."""
    from pathlib import Path

    from brainvq.config import apply_overrides
    from brainvq.runs import load_checkpoint
    from brainvq.training.stages import train_vqvae

    config = apply_overrides(
        tiny_config,  # type: ignore[arg-type]
        ["model.codebook_init=uniform", "model.dead_code_steps=0", "train.max_steps=10", "data.limit_images=64"],
    )
    train_vqvae(config, Path(str(tmp_path)) / "run", progress=False)
    state = load_checkpoint(Path(str(tmp_path)) / "run" / "checkpoints" / "vqvae-last.ckpt")["model"]
    norms = state["quantizer.codebook"].norm(dim=1)
    assert bool(torch.isfinite(norms).all()) and norms.max() < 10.0
