"""The denoising objective: noise the target views, keep the references clean.

SD2.1's forward process (the recipe's DDPM scheduler): one timestep per sample, fresh
noise on every target view (each sample's from its own generator, seeded from the run's
seed and its global sample index: `sample_generators`), reference latents left clean
(t = 0, no noise) and given to the model as they are. The loss is the mean squared error to
the training target (v or epsilon) over target views only, optionally weighted per sample by
Min-SNR-gamma (`diffusion.min_snr_gamma`; the official code weights nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler

from cameo_cli.diffusion import NoisedBatch, noised_views, snr_weights


def sample_generators(
    seed: int, first: int, count: int, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One generator per sample `first, ..., first + count - 1` of the global training stream
    (global batch k, process r, item i: k·G + r·G/W + i), seeded from (seed, that index)
    only: a sample draws the same whatever the process count, and again after a resume."""
    seeds = (
        np.random.SeedSequence([seed, first + i]).generate_state(1, np.uint64)[0]
        for i in range(count)
    )
    return [torch.Generator(device=device).manual_seed(int(s) & (2**63 - 1)) for s in seeds]


def add_training_noise(
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    ref_mask: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> NoisedBatch:
    """Draw each sample's timestep, then its noise, from its own generator (`generators`, one
    per sample) and noise every target view; references stay clean."""
    device = latents.device
    num_steps = scheduler.config.num_train_timesteps
    timesteps = torch.cat(
        [torch.randint(0, num_steps, (1,), generator=g, device=device) for g in generators]
    )
    noise = torch.stack(
        [
            torch.randn(latents.shape[1:], generator=g, device=device, dtype=latents.dtype)
            for g in generators
        ]
    )
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
