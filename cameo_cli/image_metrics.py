"""PSNR, SSIM and sharpness on images in [0, 1], `[N, 3, H, W]`, one value per image.

- PSNR = 10 log10(1 / MSE) over all pixels and channels. Identical images (MSE = 0) get
  `cap` (100 dB by default, `evaluate.psnr_cap`), so means stay finite.
- SSIM as scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=...)`: an 11 x 11 Gaussian
  window (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, population
  (co)variances, the SSIM map averaged over the pixels whose window lies inside the image
  and over channels. Computed in float64.
- Masked variants (DTU object masks `[N, H, W]` bool): PSNR from the MSE over the masked
  pixels; SSIM as the mean of the SSIM map over the masked pixels of its valid region.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5 -> an 11-pixel window
SSIM_CONFIG = {
    "window": 2 * SSIM_RADIUS + 1,
    "sigma": SSIM_SIGMA,
    "truncate": SSIM_TRUNCATE,
    "k1": SSIM_K1,
    "k2": SSIM_K2,
    "covariance": "population",
    "data_range": 1.0,
    "border": "valid region only (as scikit-image's crop)",
}


def _check(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape or prediction.dim() != 4:
        raise ValueError(
            f"expected two [N, C, H, W] tensors of one shape, got "
            f"{tuple(prediction.shape)} and {tuple(target.shape)}"
        )


def psnr(
    prediction: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    cap: float = 100.0,
) -> torch.Tensor:
    """Peak signal-to-noise ratio [N] (dB) of images in [0, 1]; `cap` where MSE is 0."""
    _check(prediction, target)
    error = (prediction.double() - target.double()) ** 2
    if mask is None:
        mse = error.mean(dim=(1, 2, 3))
    else:
        weights = mask[:, None].to(error.dtype).expand_as(error)
        mse = (error * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp(min=1)
    value = -10.0 * torch.log10(mse)
    return torch.where(mse > 0, value, torch.full_like(value, cap)).float()


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    offsets = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype, device=device)
    weights = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return weights / weights.sum()


def _blur_valid(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter without padding: [N, C, H, W] -> [N, C, H-10, W-10]."""
    channels = images.shape[1]
    horizontal = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    return F.conv2d(F.conv2d(images, horizontal, groups=channels), vertical, groups=channels)


def ssim_map(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The SSIM map [N, C, H - 10, W - 10] (float64) over each window inside the image."""
    _check(prediction, target)
    if min(prediction.shape[-2:]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * SSIM_RADIUS + 1} pixels a side")
    x, y = prediction.double(), target.double()
    window = _gaussian_window(x.dtype, x.device)
    mean_x, mean_y = _blur_valid(x, window), _blur_valid(y, window)
    var_x = _blur_valid(x * x, window) - mean_x**2
    var_y = _blur_valid(y * y, window) - mean_y**2
    cov_xy = _blur_valid(x * y, window) - mean_x * mean_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return numerator / denominator


def ssim(
    prediction: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Structural similarity [N] of images in [0, 1] (scikit-image's Gaussian SSIM)."""
    values = ssim_map(prediction, target)
    if mask is None:
        return values.mean(dim=(1, 2, 3)).float()
    r = SSIM_RADIUS
    inside = mask[:, None, r:-r, r:-r].to(values.dtype).expand_as(values)
    return ((values * inside).sum(dim=(1, 2, 3)) / inside.sum(dim=(1, 2, 3)).clamp(min=1)).float()


LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """Sum of the squared Laplacian response [N] (float64) of `[N, C, H, W]` images."""
    channels = images.shape[1]
    kernel = torch.tensor(LAPLACIAN, dtype=torch.float64, device=images.device)
    response = F.conv2d(images.double(), kernel.expand(channels, 1, 3, 3), groups=channels)
    return (response**2).sum(dim=(1, 2, 3))


def sharpness(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """High-frequency energy of `prediction` over that of `target` [N] (1 = as sharp)."""
    _check(prediction, target)
    made, truth = high_frequency_energy(prediction), high_frequency_energy(target)
    flat = torch.where(made > 0, torch.full_like(made, torch.inf), torch.ones_like(made))
    ratio = made / truth.clamp(min=torch.finfo(truth.dtype).tiny)
    return torch.where(truth > 0, ratio, flat).float()
