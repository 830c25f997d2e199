"""Validation during training: generated target views saved as images, and their PSNR.

Two estimates of the target views of a fixed held-out batch, given its clean references:

- `val/psnr`: views sampled with the sampling pipeline (`cameo_cli.pipeline`: the recipe's
  `sample` scheduler, steps and camera guidance, fixed seed): what the paper reports;
- `val/psnr_x0`: the model's one-step estimate x̂0 from a fixed noise level
  (`VALIDATION_TIMESTEP`) and fixed noise: cheap, smooth, and what the loss trains.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler
from einops import rearrange

from cameo_cli.backbone import MultiViewBackbone, ViewConditioning
from cameo_cli.batch import ViewBatch
from cameo_cli.camera_files import CameraSet
from cameo_cli.diffusion import noise_targets
from cameo_cli.image_metrics import psnr

VALIDATION_TIMESTEP = 500


def predicted_x0(
    scheduler: DDPMScheduler, noisy: torch.Tensor, prediction: torch.Tensor, timestep: int
) -> torch.Tensor:
    """x0 from the model output at integer `timestep` (v- or epsilon-prediction)."""
    alpha_bar = scheduler.alphas_cumprod[timestep].to(noisy.device, torch.float32)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    noisy, prediction = noisy.float(), prediction.float()
    if scheduler.config.prediction_type == "v_prediction":
        return a * noisy - s * prediction
    return (noisy - s * prediction) / a


@torch.no_grad()
def sampled_views(
    pipeline, batch: ViewBatch, *, steps: int, guidance: float, seed: int
) -> torch.Tensor:
    """`[B, F, 3, H, W]` in [0, 1]: references as given, targets sampled by `pipeline`."""
    images = (batch.images + 1) / 2
    out = images.clone()
    for b in range(images.shape[0]):
        refs = batch.ref_mask[b]
        k, w2c = batch.intrinsics[b], batch.world_to_camera[b]
        size = tuple(images.shape[-2:])
        generated = pipeline(
            images[b][refs],
            CameraSet.from_pixel(k[refs], w2c[refs], size),
            CameraSet.from_pixel(k[~refs], w2c[~refs], size),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
        ).images
        out[b][~refs] = generated.to(out.dtype)
    return out


def target_psnr(views: torch.Tensor, batch: ViewBatch) -> float:
    """Mean PSNR over the target views of `views` [B, F, 3, H, W] in [0, 1]."""
    targets = ~batch.ref_mask.cpu()
    truth = ((batch.images.cpu() + 1) / 2)[targets]
    return psnr(views[targets].cpu().clamp(0, 1), truth).mean().item()


@torch.no_grad()
def one_step_views(
    backbone: MultiViewBackbone,
    codec,
    scheduler: DDPMScheduler,
    batch: ViewBatch,
    *,
    seed: int,
) -> torch.Tensor:
    """`[B, F, 3, H, W]` in [0, 1]: references as given, targets as x̂0 at t = 500."""
    device = next(backbone.parameters()).device
    batch = batch.to(device)
    images, ref_mask = batch.images, batch.ref_mask
    b, f = images.shape[:2]
    latents = codec.encode(images.flatten(0, 1)).unflatten(0, (b, f))
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    timesteps = torch.full((b,), VALIDATION_TIMESTEP, device=device, dtype=torch.long)
    noisy = noise_targets(scheduler, latents, noise, timesteps, ref_mask)
    cond = ViewConditioning.from_batch(batch)
    timesteps = timesteps.float()
    prediction = backbone(noisy, timesteps, cond)
    x0 = predicted_x0(scheduler, noisy, prediction, VALIDATION_TIMESTEP)
    decoded = codec.decode(x0.flatten(0, 1)).unflatten(0, (b, f))
    decoded = torch.where(ref_mask[:, :, None, None, None], images, decoded.to(images.dtype))
    return ((decoded.float() + 1) / 2).clamp(0, 1).cpu()


def grid_image(images: torch.Tensor) -> np.ndarray:
    """`[B, R, F, 3, H, W]` in [0, 1] as one uint8 image: per sample R rows of F views."""
    grid = rearrange(images, "b r f c h w -> (b r h) (f w) c")
    return (grid.numpy() * 255).round().astype(np.uint8)
