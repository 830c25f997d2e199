"""Noise schedules: a diffusers DDPM scheduler for training; DDIM, DPM-Solver++ or UniPC
for sampling (`SAMPLERS`, chosen by `sample.scheduler`).

Both share the recipe's betas, built in three steps as the official CAMEO code does:

1. the base schedule (SD2.1: scaled-linear 0.00085-0.012 over 1000 steps);
2. `snr_shift` s: every step's SNR (1 - b) / b is divided by sqrt(s) and b = 1 / (SNR + 1)
   (the official `beta_schedule: snr_rescale` with `snr_rescale: 4`; s = 1 changes nothing);
3. optionally, the zero-terminal-SNR rescaling of Lin et al. 2024 (`rescale_betas_zero_snr`).

The paper recipes (s = 4, zero terminal SNR) give log-SNR -0.19 / -2.52 / -5.91 at
t = 250 / 500 / 750 and alpha_bar_999 = 0. Prediction type: "v_prediction" or "epsilon".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from cameo_cli.config import DiffusionConfig
from cameo_cli.errors import CameoError

PREDICTIONS = ("v_prediction", "epsilon")
# Sampler name -> (diffusers class, its options beside the shared schedule).
SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, object]]] = {
    "ddim": (DDIMScheduler, {}),
    "dpm-solver++": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True},
    ),
    "unipc": (UniPCMultistepScheduler, {"solver_order": 2, "predict_x0": True}),
}


def training_betas(config: DiffusionConfig) -> torch.Tensor:
    """[T] float32 betas of steps 1 and 2 above (step 3 is diffusers' own)."""
    base = DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
    ).betas
    if config.snr_shift == 1.0:
        return base
    snr = (1.0 - base) / base / math.sqrt(config.snr_shift)
    return 1.0 / (snr + 1.0)


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
        "trained_betas": training_betas(config).numpy(),
        "prediction_type": config.prediction,
        "rescale_betas_zero_snr": config.zero_terminal_snr,
        "clip_sample": False,
    }


def make_train_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The forward process used in training (`add_noise`, `get_velocity`)."""
    return DDPMScheduler(**_scheduler_options(config))


def make_sampler(config: DiffusionConfig, name: str = "ddim") -> SchedulerMixin:
    """A sampler with the training betas: DDIM (deterministic by default), DPM-Solver++
    (2nd order multistep) or UniPC, by `name` (a key of `SAMPLERS`).

    `timestep_spacing` "leading" is SD2.1's scheduler config, which the official pipeline
    loads whatever the betas: steps offset by 1 (t = 981, 961, ... 1 for 50 steps) and the
    last step's alpha = alpha_0. "trailing" starts at t = T - 1, where the model sees pure
    noise under zero terminal SNR (Lin et al. 2024). DPM-Solver++ and UniPC are built as
    diffusers users swap schedulers: `from_config` of the DDIM config.
    """
    spacing = (
        {"timestep_spacing": "trailing", "set_alpha_to_one": True}
        if config.timestep_spacing == "trailing"
        else {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}
    )
    ddim = DDIMScheduler(**_scheduler_options(config), **spacing)
    if name not in SAMPLERS:
        raise CameoError(f"unknown scheduler {name!r}: choose from {', '.join(SAMPLERS)}")
    cls, options = SAMPLERS[name]
    return ddim if cls is DDIMScheduler else cls.from_config(ddim.config, **options)


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


def snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
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


@dataclass
class NoisedBatch:
    """Latents with their target views noised, and what the model regresses."""

    noisy: torch.Tensor  # [B, F, C, h, w]: noisy targets, clean references
    target: torch.Tensor  # [B, F, C, h, w]: v or epsilon (meaningful on target views)
    timesteps: torch.Tensor  # [B] long


def noised_views(
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    ref_mask: torch.Tensor,
) -> NoisedBatch:
    """`latents` [B, F, C, h, w] with their target views noised to `timesteps` [B] by `noise`
    (`noise_targets`, references clean) and the training target of every view."""
    batch, views = latents.shape[:2]
    per_view_t = timesteps.repeat_interleave(views)
    target = training_target(
        scheduler, latents.flatten(0, 1), noise.flatten(0, 1), per_view_t
    ).unflatten(0, (batch, views))
    noisy = noise_targets(scheduler, latents, noise, timesteps, ref_mask)
    return NoisedBatch(noisy=noisy, target=target, timesteps=timesteps)
