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
    sampler = make_sampler(DiffusionConfig(zero_terminal_snr=True, timestep_spacing="trailing"))
    sampler.set_timesteps(50)
    assert sampler.timesteps[0] == 999 and len(sampler.timesteps) == 50
    assert sampler.final_alpha_cumprod == 1
    sampler = make_sampler(DiffusionConfig())
    sampler.set_timesteps(50)
    assert sampler.timesteps[0] == 981 and sampler.timesteps[-1] == 1
    assert sampler.final_alpha_cumprod == sampler.alphas_cumprod[0]


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
    (zero SNR, trailing steps, final alpha 1) end exactly on it."""
    spacing = "trailing" if zero_terminal_snr else "leading"
    config = DiffusionConfig(
        prediction=prediction, zero_terminal_snr=zero_terminal_snr, timestep_spacing=spacing
    )
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


def official_alphas_cumprod(snr_shift: float) -> torch.Tensor:
    """float64, from the official formulas (`scheduling_ddpm.py`, `snr_rescale`): SD2.1 betas,
    per-step SNR (1 - b) / b divided by sqrt(snr_shift), b = 1 / (SNR + 1), then the
    zero-terminal-SNR rescaling of sqrt(alpha_bar)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    snr = (1 - betas) / betas / snr_shift**0.5
    alpha_bar = torch.cumprod(1 - 1 / (snr + 1), 0)
    root = alpha_bar.sqrt()
    return ((root - root[-1]) * root[0] / (root[0] - root[-1])) ** 2


@pytest.mark.parametrize("name", ["cat3d-re10k", "cat3d-re10k-baseline", "mvgenmaster-re10k"])
def test_paper_recipes_train_and_sample_on_the_official_schedule(name: str) -> None:
    from cameo_cli.config import load_recipe

    config = load_recipe(name).diffusion
    expected = official_alphas_cumprod(4.0)
    log_snr = {250: -0.19, 500: -2.52, 750: -5.91}  # the official schedule's values
    for scheduler in (make_train_scheduler(config), make_sampler(config)):
        alpha_bar = scheduler.alphas_cumprod.double()
        torch.testing.assert_close(alpha_bar, expected, atol=2e-6, rtol=1e-4)
        for t, value in log_snr.items():
            assert abs(torch.log(alpha_bar[t] / (1 - alpha_bar[t])).item() - value) < 0.01
        assert alpha_bar[999] == 0
    sampler = make_sampler(config)
    sampler.set_timesteps(50)
    assert sampler.timesteps[0] == 981 and sampler.timesteps[-1] == 1  # SD2.1's spacing


def test_snr_shift_one_is_the_base_schedule() -> None:
    shifted = make_train_scheduler(DiffusionConfig(snr_shift=1.0)).alphas_cumprod
    torch.testing.assert_close(
        shifted.double(), reference_alphas_cumprod(False), atol=2e-6, rtol=1e-4
    )


def test_min_snr_gamma_replaces_the_old_snr_rescale_key() -> None:
    from cameo_cli.config import recipe_from_dict

    assert recipe_from_dict({"diffusion": {"snr_rescale": False}}).diffusion.min_snr_gamma is None
    for value in (True, 4):
        with pytest.raises(CameoError, match="min_snr_gamma.*snr_shift"):
            recipe_from_dict({"diffusion": {"snr_rescale": value}})
    with pytest.raises(CameoError, match="> 0"):
        recipe_from_dict({"diffusion": {"min_snr_gamma": 0.0}})
