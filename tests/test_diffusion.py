"""The schedules against their closed forms (float64 references)."""

from __future__ import annotations

import pytest
import torch

from cameo_cli.config import DiffusionConfig
from cameo_cli.diffusion import (
    make_sampler,
    make_train_scheduler,
    signal_to_noise,
    snr_weights,
    training_target,
)
from cameo_cli.errors import CameoError


def reference_alphas_cumprod(zero_terminal_snr: bool) -> torch.Tensor:
    """SD2.1's scaled-linear schedule (and the zero-SNR rescaling) in float64."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)
    if zero_terminal_snr:
        root = alpha_bar.sqrt()
        root = (root - root[-1]) * root[0] / (root[0] - root[-1])
        alpha_bar = root**2
    return alpha_bar


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_train_and_sample_schedules_match_the_closed_form(zero_terminal_snr: bool) -> None:
    config = DiffusionConfig(zero_terminal_snr=zero_terminal_snr)
    expected = reference_alphas_cumprod(zero_terminal_snr)
    for scheduler in (make_train_scheduler(config), make_sampler(config)):
        torch.testing.assert_close(
            scheduler.alphas_cumprod.double(), expected, atol=2e-6, rtol=1e-4
        )
    if zero_terminal_snr:
        assert make_train_scheduler(config).alphas_cumprod[-1] == 0


def test_sampler_spacing() -> None:
    sampler = make_sampler(DiffusionConfig(zero_terminal_snr=True))
    sampler.set_timesteps(50)
    assert sampler.timesteps[0] == 999 and len(sampler.timesteps) == 50
    sampler = make_sampler(DiffusionConfig())
    sampler.set_timesteps(50)
    assert sampler.timesteps[0] == 981 and sampler.timesteps[-1] == 1


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_training_target(prediction: str) -> None:
    scheduler = make_train_scheduler(DiffusionConfig(prediction=prediction))
    x0, noise = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    timesteps = torch.tensor([10, 900])
    target = training_target(scheduler, x0, noise, timesteps)
    if prediction == "epsilon":
        assert torch.equal(target, noise)
        return
    alpha_bar = reference_alphas_cumprod(False)[timesteps].float().view(2, 1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    torch.testing.assert_close(target, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("prediction", "zero_terminal_snr"),
    [("v_prediction", False), ("epsilon", False), ("v_prediction", True)],
)
def test_ddim_with_an_oracle_model_recovers_the_sample(
    prediction: str, zero_terminal_snr: bool
) -> None:
    """Feeding DDIM the exact prediction for a known x0 must predict x0 at every step, and
    (zero SNR, final alpha 1) end exactly on it."""
    config = DiffusionConfig(prediction=prediction, zero_terminal_snr=zero_terminal_snr)
    sampler = make_sampler(config)
    sampler.set_timesteps(20)
    x0 = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sample = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for t in sampler.timesteps:
        alpha_bar = sampler.alphas_cumprod[t]
        noise = (sample - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        output = (
            noise
            if prediction == "epsilon"
            else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
        )
        step = sampler.step(output, t, sample)
        torch.testing.assert_close(step.pred_original_sample, x0, atol=2e-3, rtol=0)
        sample = step.prev_sample
    if zero_terminal_snr:
        torch.testing.assert_close(sample, x0, atol=2e-3, rtol=0)


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_min_snr_weights(prediction: str) -> None:
    zero_snr = prediction == "v_prediction"
    config = DiffusionConfig(prediction=prediction, zero_terminal_snr=zero_snr)
    scheduler = make_train_scheduler(config)
    timesteps = torch.tensor([0, 100, 500, 999])
    alpha_bar = reference_alphas_cumprod(zero_snr)[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    torch.testing.assert_close(
        signal_to_noise(scheduler, timesteps).double()[:3], snr[:3], rtol=1e-3, atol=0
    )
    weights = snr_weights(scheduler, timesteps, gamma=5.0).double()
    clipped = snr.clamp(max=5.0)
    if prediction == "v_prediction":
        expected = clipped / (snr + 1)
    else:
        expected = (5.0 / snr).clamp(max=1.0)
    torch.testing.assert_close(weights, expected.double(), rtol=1e-3, atol=1e-6)
    assert torch.isfinite(weights).all()


def test_unknown_prediction_is_a_user_error() -> None:
    with pytest.raises(CameoError, match="diffusion.prediction"):
        make_train_scheduler(DiffusionConfig(prediction="sample"))
    with pytest.raises(CameoError, match="zero_terminal_snr"):
        make_sampler(DiffusionConfig(prediction="epsilon", zero_terminal_snr=True))
