from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from brainvq.evaluation.metrics import (
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


def test_psnr_is_finite_for_identical_black_slices_and_capped_at_quantisation_noise() -> None:
    black = torch.zeros(2, 1, 32, 32)
    psnr = psnr_per_image(black, black)
    assert bool(torch.isfinite(psnr).all())  # issue 9.8: was inf (and Infinity in the JSON)
    assert psnr[0].item() == pytest.approx(10 * np.log10(12 * 255**2), abs=1e-3)  # 58.9 dB
    pred, target = _pair()
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(psnr_per_image(pred, target), 10 * torch.log10(1 / mse), atol=1e-4)


def test_brain_masked_metrics_only_see_the_brain() -> None:
    from brainvq.evaluation.metrics import foreground_mask, masked_metrics

    target = torch.zeros(1, 1, 64, 64)
    target[..., 16:48, 16:48] = 0.6
    pred = target.clone()
    pred[..., :8, :8] = 1.0  # damage outside the brain only
    mask = target > 0.5
    ssim, psnr, valid = masked_metrics(pred, target, mask)
    assert valid.item() and ssim.item() == pytest.approx(1.0, abs=1e-3) and psnr.item() > 58
    assert psnr_per_image(pred, target).item() < 20  # whole-image PSNR sees the damage
    region = foreground_mask(target)
    assert region[0, 0, 14, 30] and not region[0, 0, 5, 5]  # 0.1 threshold, dilated by 2 pixels
    meter = ReconstructionMeter(4)
    meter.update(pred, target, torch.zeros(1, 4, 4, dtype=torch.long), masks=mask[:, 0].long())
    summary = meter.summary()
    assert summary["brain_ssim"] == pytest.approx(1.0, abs=1e-3) and summary["brain_region"].startswith("masks")
    empty = masked_metrics(pred, target, torch.zeros_like(mask))[2]
    assert not empty.item()  # slices without brain are left out of the brain means


def _reference_ms_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """MS-SSIM (Wang et al. 2003) written from the paper with scipy: Gaussian window 11 / sigma 1.5,
    statistics where the window fits, 2x2 average pooling between the 5 scales."""
    from scipy.ndimage import correlate

    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    c1, c2 = 0.01**2, 0.03**2
    grid = np.arange(11) - 5
    g = np.exp(-(grid**2) / (2 * 1.5**2))
    g /= g.sum()
    window = np.outer(g, g)

    def filt(image: np.ndarray) -> np.ndarray:
        return correlate(image, window, mode="constant")[5:-5, 5:-5]

    value = 1.0
    for scale, weight in enumerate(weights):
        mx, my = filt(x), filt(y)
        vx, vy, cov = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
        cs = (2 * cov + c2) / (vx + vy + c2)
        if scale < 4:
            value *= max(float(cs.mean()), 0.0) ** weight
            h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
            x = x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
            y = y[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        else:
            luminance = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            value *= max(float((luminance * cs).mean()), 0.0) ** weight
    return value


@pytest.mark.parametrize("size", [164, 175, 176, 200])
def test_ms_ssim_bound_and_value_against_a_reference(size: int) -> None:
    from brainvq.evaluation.metrics import ms_ssim_supported

    assert ms_ssim_supported((size, size)) == (size >= 176)  # issue 9.9: 164..175 used to crash
    if not ms_ssim_supported((size, size)):
        return
    generator = torch.Generator().manual_seed(size)
    target = torch.nn.functional.avg_pool2d(torch.rand(1, 1, size, size, generator=generator), 5, 1, 2)
    pred = (target + 0.05 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    ours = ms_ssim_per_image(pred, target).item()
    reference = _reference_ms_ssim(pred[0, 0].double().numpy(), target[0, 0].double().numpy())
    assert ours == pytest.approx(reference, abs=2e-3)


def test_two_level_evaluation_reports_what_the_top_map_carries_alone(phantom_root: Path) -> None:
    from brainvq.config import ModelConfig
    from brainvq.data.dataset import load_split
    from brainvq.evaluation.metrics import evaluate_reconstructions
    from brainvq.models.vqvae import build_vqvae

    torch.manual_seed(0)
    config = ModelConfig(
        hidden_channels=16, residual_hidden_channels=8, embedding_dim=8, num_embeddings=32,
        levels=2, top_downsample=2, top_num_embeddings=16,
    )  # fmt: skip
    model = build_vqvae(config)
    dataset = load_split(phantom_root, "validate")
    model.train()
    model(torch.stack([dataset[i]["image"] for i in range(4)]))  # initialise both codebooks
    summary = evaluate_reconstructions(model, dataset, batch_size=8)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    expected = ssim_per_image(model.decode_top(model.encode(images).top), images).mean()
    assert summary["top_only_ssim"] == pytest.approx(float(expected), abs=1e-5)
    with torch.no_grad():  # zero the top path's last layer: the top map then decodes to a constant
        for conv in model.top_upsample.up:
            conv.weight.zero_()
            conv.bias.zero_()
    flat = evaluate_reconstructions(model, dataset, batch_size=8)["top_only_ssim"]
    assert flat < summary["top_only_ssim"]
    cheap = evaluate_reconstructions(model, dataset, batch_size=8, full=False)
    assert "top_only_ssim" not in cheap
