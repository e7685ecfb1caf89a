import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from brainvq.metrics import (
    PriorMeter,
    ReconstructionMeter,
    code_usage,
    ms_ssim_per_image,
    psnr_per_image,
    ssim_per_image,
    ssim_seed_per_image,
)


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(3, 1, 64, 64, generator=generator)
    target = torch.nn.functional.avg_pool2d(target, 5, 1, 2)  # some structure
    noisy = (target + 0.08 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    return noisy, target


def test_ssim_matches_scikit_image() -> None:
    pred, target = _pair()
    ours = ssim_per_image(pred, target)
    for i in range(3):
        reference = structural_similarity(
            target[i, 0].numpy().astype(np.float64),
            pred[i, 0].numpy().astype(np.float64),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[i].item() == pytest.approx(reference, abs=2e-4)


def test_seed_ssim_is_inflated_and_matches_data_range_three() -> None:
    pred, target = _pair(1)
    standard, seed = ssim_per_image(pred, target), ssim_seed_per_image(pred, target)
    assert (seed > standard).all()
    reference = structural_similarity(
        target[0, 0].numpy().astype(np.float64),
        pred[0, 0].numpy().astype(np.float64),
        data_range=3.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert seed[0].item() == pytest.approx(reference, abs=2e-4)


def test_psnr_and_ms_ssim() -> None:
    target = torch.rand(2, 1, 192, 192)
    pred = (target + 0.1).clamp(0, 1)
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(psnr_per_image(pred, target), 10 * torch.log10(1 / mse), atol=1e-4)
    assert torch.allclose(ms_ssim_per_image(target, target), torch.ones(2), atol=1e-5)
    assert (ms_ssim_per_image(pred, target) < 1).all()


def test_code_usage_and_meters() -> None:
    used, perplexity = code_usage(torch.tensor([5.0, 5.0, 0.0, 0.0]))
    assert used == 2 and perplexity == pytest.approx(2.0)
    meter = ReconstructionMeter(num_embeddings=4)
    pred, target = _pair()
    meter.update(pred, target, torch.tensor([[0, 1], [1, 3]]), torch.tensor([7, 7, 9]))
    summary = meter.summary()
    assert summary["images"] == 3 and summary["codes_used"] == 3
    assert set(summary["per_subject_ssim"]) == {"007", "009"}
    assert summary["ms_ssim"] is None  # 64x64 is too small for 5-scale MS-SSIM
    prior = PriorMeter()
    logits = torch.zeros(1, 4, 2, 2)
    logits[0, 2] = 10.0
    prior.update(logits, torch.tensor([[[2, 2], [2, 1]]]))
    result = prior.summary()
    assert result["prior_accuracy"] == pytest.approx(0.75)
    assert result["prior_nll_bits"] > 0
