"""Noise schedules: a diffusers DDPM scheduler for training, DDIM for sampling.

Both share the recipe's betas (SD2.1: scaled-linear 0.00085-0.012 over 1000 steps), its
prediction type ("v_prediction" or "epsilon") and, optionally, the zero-terminal-SNR
rescaling of Lin et al. 2024 (`rescale_betas_zero_snr`).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from cameo_cli.config import DiffusionConfig
from cameo_cli.errors import CameoError

PREDICTIONS = ("v_prediction", "epsilon")


def _scheduler_options(config: DiffusionConfig) -> dict[str, object]:
    if config.prediction not in PREDICTIONS:
        raise CameoError(
            f"diffusion.prediction must be one of {', '.join(PREDICTIONS)}, "
            f"got {config.prediction!r}"
        )
    if config.zero_terminal_snr and config.prediction == "epsilon":
        raise CameoError(
            "diffusion.zero_terminal_snr needs diffusion.prediction=v_prediction: at zero SNR "
            "a noise prediction carries no information about the image"
        )
    return {
        "num_train_timesteps": config.num_train_timesteps,
        "beta_start": config.beta_start,
        "beta_end": config.beta_end,
        "beta_schedule": config.beta_schedule,
        "prediction_type": config.prediction,
        "rescale_betas_zero_snr": config.zero_terminal_snr,
        "clip_sample": False,
    }


def make_train_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The forward process used in training (`add_noise`, `get_velocity`)."""
    return DDPMScheduler(**_scheduler_options(config))


def make_sampler(config: DiffusionConfig) -> DDIMScheduler:
    """A deterministic-by-default DDIM sampler with the training betas.

    With zero terminal SNR the timesteps are "trailing" (the first step is t = T - 1, where
    the model sees pure noise), as the rescaling requires; otherwise SD2.1's own spacing
    ("leading", offset 1, final alpha = alpha_0).
    """
    spacing = (
        {"timestep_spacing": "trailing", "set_alpha_to_one": True}
        if config.zero_terminal_snr
        else {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}
    )
    return DDIMScheduler(**_scheduler_options(config), **spacing)


def training_target(
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """What the model regresses: v = sqrt(a) * noise - sqrt(1 - a) * x0, or the noise itself.

    `timesteps` holds one integer step per leading item of `x0`.
    """
    if scheduler.config.prediction_type == "epsilon":
        return noise
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps.long())
    raise CameoError(f"unsupported prediction type {scheduler.config.prediction_type!r}")


def signal_to_noise(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = alpha_bar / (1 - alpha_bar) for integer `timesteps` (float32, their device)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device, torch.float32)
    alpha_bar = alphas_cumprod[timesteps.long()]
    return alpha_bar / (1.0 - alpha_bar)


def snr_weights(
    scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float = 5.0
) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023), shape `[B]`.

    The weight makes every prediction type equivalent to an x0 loss clipped at SNR gamma:
    `min(SNR, gamma) / SNR` for epsilon and `min(SNR, gamma) / (SNR + 1)` for v. At zero
    terminal SNR the epsilon weight is 1 (`min(1, gamma / 0)`).
    """
    snr = signal_to_noise(scheduler, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1.0)
    return torch.clamp(gamma / snr, max=1.0)


def noise_targets(
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    ref_mask: torch.Tensor,
) -> torch.Tensor:
    """Latents `x0` [B, F, C, h, w] noised to one integer step per sample (`timesteps` [B])
    on the target views; reference views (`ref_mask` [B, F]) stay clean (t = 0, no noise)."""
    batch, views = x0.shape[:2]
    per_view_t = timesteps.long().repeat_interleave(views)
    noisy = scheduler.add_noise(x0.flatten(0, 1), noise.flatten(0, 1), per_view_t)
    keep_clean = ref_mask.to(x0.device)[:, :, None, None, None]
    return torch.where(keep_clean, x0, noisy.unflatten(0, (batch, views)))
