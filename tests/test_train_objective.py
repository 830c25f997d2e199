"""The denoising objective against closed forms: clean references, target-only loss, x0."""

from __future__ import annotations

import pytest
import torch

from cameo_cli.config import DiffusionConfig
from cameo_cli.diffusion import make_train_scheduler
from cameo_cli.image_metrics import psnr
from cameo_cli.train.objective import add_training_noise, denoising_loss, sample_generators
from cameo_cli.train.validation import predicted_x0


@pytest.fixture(params=["v_prediction", "epsilon"])
def scheduler(request):
    return make_train_scheduler(DiffusionConfig(prediction=request.param))


def _batch():
    latents = torch.randn(3, 4, 2, 5, 5, dtype=torch.float64)
    ref_mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    return latents, ref_mask


def test_references_stay_clean_and_targets_follow_the_forward_process(scheduler):
    latents, ref_mask = _batch()
    noised = add_training_noise(scheduler, latents, ref_mask, sample_generators(3, 0, 3))
    # Redraw the same timesteps and noise, sample by sample, to check against the closed form.
    replay = sample_generators(3, 0, 3)
    t = torch.cat([torch.randint(0, 1000, (1,), generator=g) for g in replay])
    noise = torch.stack(
        [torch.randn(latents.shape[1:], generator=g, dtype=latents.dtype) for g in replay]
    )
    assert torch.equal(noised.timesteps, t)
    alpha_bar = scheduler.alphas_cumprod.double()[t][:, None, None, None, None]
    expected = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    assert torch.equal(noised.noisy[ref_mask], latents[ref_mask])
    assert torch.allclose(noised.noisy[~ref_mask], expected[~ref_mask], atol=1e-6)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    assert torch.allclose(noised.target, target, atol=1e-6)
    # x0 recovered from the exact target at a fixed step
    step = 500
    a = scheduler.alphas_cumprod.double()[step]
    x_t = a.sqrt() * latents + (1 - a).sqrt() * noise
    exact = (
        noise
        if scheduler.config.prediction_type == "epsilon"
        else (a.sqrt() * noise - (1 - a).sqrt() * latents)
    )
    recovered = predicted_x0(scheduler, x_t, exact, step)
    assert torch.allclose(recovered.double(), latents, atol=1e-4)


def test_loss_covers_target_views_only(scheduler):
    latents, ref_mask = _batch()
    noised = add_training_noise(scheduler, latents, ref_mask, sample_generators(0, 0, 3))
    prediction = noised.target + 0.5
    base = denoising_loss(prediction, noised, ref_mask, scheduler, min_snr_gamma=None)
    assert base.item() == pytest.approx(0.25)
    garbage = prediction.clone()
    garbage[ref_mask] = 1e6  # anything on reference views is ignored
    same = denoising_loss(garbage, noised, ref_mask, scheduler, min_snr_gamma=None)
    assert same.item() == pytest.approx(0.25)
    # A sample's weight does not depend on its number of targets: per-sample means.
    one_off = prediction.clone()
    one_off[2, 3] += 0.5  # the only target of sample 2: (1.0)^2 instead of 0.5^2
    value = denoising_loss(one_off, noised, ref_mask, scheduler, min_snr_gamma=None).item()
    assert value == pytest.approx((0.25 + 0.25 + 1.0) / 3)


def test_min_snr_gamma_weights_each_sample(scheduler):
    from cameo_cli.diffusion import snr_weights

    latents, ref_mask = _batch()
    noised = add_training_noise(scheduler, latents, ref_mask, sample_generators(1, 0, 3))
    prediction = noised.target + 0.5
    weighted = denoising_loss(prediction, noised, ref_mask, scheduler, min_snr_gamma=5.0)
    expected = (0.25 * snr_weights(scheduler, noised.timesteps, 5.0)).mean()
    assert weighted.item() == pytest.approx(expected.item())


def test_psnr_matches_the_definition():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.1)
    assert psnr(b, a).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)


def test_a_sample_draws_the_same_noise_whatever_batch_holds_it(scheduler):
    """Global samples 0-3 as one batch of 4 or as two processes' batches of 2: same draws."""
    latents = torch.randn(4, 4, 2, 5, 5)
    ref_mask = torch.tensor([[1, 0, 0, 0]] * 4, dtype=torch.bool)
    whole = add_training_noise(scheduler, latents, ref_mask, sample_generators(7, 8, 4))
    halves = [
        add_training_noise(
            scheduler, latents[2 * r : 2 * r + 2], ref_mask[:2], sample_generators(7, 8 + 2 * r, 2)
        )
        for r in (0, 1)
    ]
    assert torch.equal(whole.timesteps, torch.cat([h.timesteps for h in halves]))
    assert torch.equal(whole.noisy, torch.cat([h.noisy for h in halves]))
    other = add_training_noise(scheduler, latents, ref_mask, sample_generators(7, 12, 4))
    assert not torch.equal(whole.noisy, other.noisy)  # the next samples draw afresh
