"""PSNR and SSIM against scikit-image; sharpness by hand and against scipy; LPIPS against
torchmetrics with the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cameo_cli.errors import CameoError
from cameo_cli.image_metrics import psnr, ssim
from cameo_cli.lpips import LPIPS, default_backbone_path


def random_pairs(count: int = 4, size: tuple[int, int] = (37, 45)) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(count, 3, *size, generator=generator, dtype=torch.float64)
    noise = 0.15 * torch.randn(count, 3, *size, generator=generator, dtype=torch.float64)
    return (target + noise).clamp(0, 1), target


def numpy_image(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def test_psnr_and_ssim_match_scikit_image() -> None:
    prediction, target = random_pairs()
    ours_psnr, ours_ssim = psnr(prediction, target), ssim(prediction, target)
    for i in range(len(target)):
        reference_psnr = peak_signal_noise_ratio(
            numpy_image(target[i]), numpy_image(prediction[i]), data_range=1
        )
        reference_ssim = structural_similarity(
            numpy_image(prediction[i]),
            numpy_image(target[i]),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=2,
        )
        assert abs(ours_psnr[i].item() - reference_psnr) <= 1e-4
        assert abs(ours_ssim[i].item() - reference_ssim) <= 1e-4


def test_ssim_differs_from_skimage_default_sample_covariance() -> None:
    """pixelSplat and MVSplat call skimage with its default, sample covariance (each variance
    and covariance x 121/120), which lowers SSIM: by 4.4e-5 on this close prediction (SSIM
    0.983); docs/fidelity.md lists the offsets measured on rendered views."""
    y, x = torch.meshgrid(torch.linspace(0, 6, 64), torch.linspace(0, 9, 64), indexing="ij")
    target = 0.5 + 0.4 * torch.sin(x[None] + torch.tensor([0.0, 1, 2])[:, None, None] * y)
    noise = 0.01 * torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))
    prediction = (target + noise).clamp(0, 1)
    ours = ssim(prediction[None].double(), target[None].double()).item()
    sample = structural_similarity(
        numpy_image(prediction.double()),
        numpy_image(target.double()),
        gaussian_weights=True,
        sigma=1.5,
        data_range=1,
        channel_axis=2,
    )
    assert 0.98 < ours < 0.99 and ours - sample == pytest.approx(4.4e-5, abs=2e-6)


def test_identical_images() -> None:
    _, target = random_pairs(2)
    assert psnr(target, target).tolist() == [100.0, 100.0]
    assert psnr(target, target, cap=float("inf")).isinf().all()
    torch.testing.assert_close(ssim(target, target), torch.ones(2))


def test_masked_variants() -> None:
    prediction, target = random_pairs(1, (32, 32))
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[:, 8:24, 4:20] = True
    inside = (prediction - target)[..., 8:24, 4:20]
    expected = -10 * torch.log10((inside**2).mean())
    torch.testing.assert_close(psnr(prediction, target, mask=mask), expected.float().view(1))
    spoiled = prediction.clone()
    spoiled[..., :, 26:] = 1 - spoiled[..., :, 26:]  # outside the mask and its SSIM windows
    torch.testing.assert_close(
        ssim(spoiled, target, mask=mask), ssim(prediction, target, mask=mask)
    )
    assert psnr(spoiled, target, mask=mask) == psnr(prediction, target, mask=mask)
    assert ssim(spoiled, target) < ssim(prediction, target)


def torchmetrics_lpips(net: str):
    from torchmetrics.functional.image.lpips import _LPIPS

    torch.manual_seed(0)
    return _LPIPS(pretrained=True, net=net, pnet_rand=True).eval()


def save_backbone(reference, net: str, path: Path) -> Path:
    """The random backbone of torchmetrics' LPIPS as a torchvision-style state dict."""
    state = {}
    for slice_module in (
        reference.net.slice1,
        reference.net.slice2,
        reference.net.slice3,
        reference.net.slice4,
        reference.net.slice5,
    ):
        for name, tensor in slice_module.state_dict().items():
            state[f"features.{name}"] = tensor
    torch.save(state, path)
    return path


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_matches_torchmetrics_with_the_same_weights(net: str, tmp_path: Path) -> None:
    reference = torchmetrics_lpips(net)
    weights = save_backbone(reference, net, tmp_path / "backbone.pth")
    ours = LPIPS.load(net, backbone_path=weights)
    prediction, target = (x.float() for x in random_pairs(3, (64, 64)))
    with torch.no_grad():
        expected = reference(prediction, target, normalize=True).flatten()
    torch.testing.assert_close(ours(prediction, target), expected, rtol=1e-5, atol=1e-6)
    assert (expected > 0).all()
    assert ours(target, target).abs().max() == 0
    full = torch.ones(3, 64, 64, dtype=torch.bool)
    masked = ours.masked(prediction, target, full)
    torch.testing.assert_close(masked, expected, rtol=0.05, atol=0)  # upsampled maps


def test_lpips_without_backbone_weights_says_how_to_provide_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CameoError) as error:
        LPIPS.load("vgg")
    message = error.value.message
    expected_file = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert str(expected_file) in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert "--metrics psnr,ssim" in message and "--lpips-weights" in message


@pytest.mark.skipif(
    not default_backbone_path("vgg").is_file(), reason="torchvision VGG16 ImageNet weights absent"
)
def test_lpips_with_real_weights_matches_torchmetrics() -> None:
    from torchmetrics.functional.image.lpips import _LPIPS

    reference = _LPIPS(pretrained=True, net="vgg").eval()
    ours = LPIPS.load("vgg")
    prediction, target = (x.float() for x in random_pairs(2, (64, 64)))
    with torch.no_grad():
        expected = reference(prediction, target, normalize=True).flatten()
    torch.testing.assert_close(ours(prediction, target), expected, rtol=1e-5, atol=1e-6)


def test_sharpness_of_a_single_bright_pixel_by_hand() -> None:
    from cameo_cli.image_metrics import high_frequency_energy, sharpness

    truth = torch.zeros(1, 3, 7, 7)
    truth[0, :, 3, 3] = 1.0
    # Laplacian response: -4 at the pixel, +1 at its four neighbours: 16 + 4 per channel
    assert high_frequency_energy(truth).item() == 3 * 20.0
    assert sharpness(truth, truth).item() == 1.0
    assert sharpness(0.5 * truth, truth).item() == 0.25  # half the contrast, a quarter
    flat = torch.full_like(truth, 0.3)
    assert sharpness(flat, truth).item() == 0.0
    assert sharpness(flat, flat).item() == 1.0 and sharpness(truth, flat).item() == float("inf")


def test_sharpness_of_a_blurred_image_is_below_one() -> None:
    from scipy.ndimage import gaussian_filter, laplace

    from cameo_cli.image_metrics import high_frequency_energy, sharpness

    _, truth = random_pairs()
    energy = high_frequency_energy(truth)
    for i in range(len(truth)):  # scipy's 4-neighbour Laplacian, border pixels left out
        reference = sum((laplace(truth[i, c].numpy())[1:-1, 1:-1] ** 2).sum() for c in range(3))
        assert energy[i].item() == pytest.approx(reference, rel=1e-12)
    blurred = torch.from_numpy(gaussian_filter(truth.numpy(), sigma=(0, 0, 1, 1)))
    assert (sharpness(truth, truth) == 1).all()
    assert (sharpness(blurred, truth) < 0.2).all()
    noisy, _ = random_pairs()
    assert (sharpness(noisy, truth) > 1).all()  # added noise: more than the truth
