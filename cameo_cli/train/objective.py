"""The denoising objective: noise the target views, keep the references clean.

SD2.1's forward process (the recipe's DDPM scheduler): one timestep per sample, fresh
noise on every target view, reference latents left clean (t = 0, no noise) and given to the
model as they are. The loss is the mean squared error to the training target (v or epsilon)
over target views only, optionally weighted per sample by Min-SNR-gamma
(`diffusion.min_snr_gamma`; the official code weights nothing).
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from cameo_cli.diffusion import NoisedBatch, noised_views, snr_weights


def add_training_noise(
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    ref_mask: torch.Tensor,
    generator: torch.Generator,
) -> NoisedBatch:
    """Draw one timestep per sample and noise every target view; references stay clean."""
    device = latents.device
    num_steps = scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_steps, (latents.shape[0],), generator=generator, device=device)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    return noised_views(scheduler, latents, noise, timesteps, ref_mask)


def denoising_loss(
    prediction: torch.Tensor,
    noised: NoisedBatch,
    ref_mask: torch.Tensor,
    scheduler: DDPMScheduler,
    min_snr_gamma: float | None,
) -> torch.Tensor:
    """Mean squared error over target views only (fp32); Min-SNR-gamma weights unless
    `min_snr_gamma` is None."""
    error = (prediction.float() - noised.target.float()).pow(2).mean(dim=(2, 3, 4))  # [B, F]
    is_target = (~ref_mask.to(error.device)).float()
    per_sample = (error * is_target).sum(1) / is_target.sum(1).clamp(min=1.0)  # [B]
    if min_snr_gamma is not None:
        per_sample = per_sample * snr_weights(scheduler, noised.timesteps, min_snr_gamma)
    return per_sample.mean()
