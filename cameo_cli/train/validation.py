"""Validation during training: held-out convergence metrics, and generated views as images.

On a fixed held-out batch, given its clean references, with fixed noise:

- `val/psnr`: target views sampled with the sampling pipeline (`cameo_cli.pipeline`: the
  recipe's `sample` scheduler, steps and camera guidance, fixed seed): what the paper reports;
- `val/psnr_x0`: the model's one-step estimate x̂0 at t = 500 (`VALIDATION_TIMESTEP`);
- `val/denoise_t*`: the denoising loss at t = 250, 500, 750 (`HELD_OUT_TIMESTEPS`);
- `val/precision`, `val/precision_1tok`: the supervised layer's head-averaged attention
  against the geometric correspondence (exact, within one token), at t = 500;
- `val/precision_head`, `val/precision_head_1tok`: the same through the method's own match
  scorer (`AlignmentMethod.match_scorer`: CAMEO's projection head);
- `val/sharpness`: the sampled target views' high-frequency energy over the truth's
  (`image_metrics.sharpness`: 1 = as sharp, below 1 blurred), beside `val/psnr`;
- `val/line_flat_psnr`, `val/line_copy_psnr`, `val/line_reproject_psnr` (with point maps) and
  `val/line_reproject_seen`: the reference lines of the batch (`cameo_cli.reference_lines`),
  which do not depend on the model: the trainer logs them at its first validation.

All but `val/psnr` cost one forward pass each, so they can be logged often.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler
from einops import rearrange

from cameo_cli.attention.hooks import (
    MatchScorer,
    ProbeResult,
    head_averaged_argmax,
    predicted_matches,
)
from cameo_cli.backbone import MultiViewBackbone
from cameo_cli.batch import ViewBatch
from cameo_cli.camera_files import CameraSet
from cameo_cli.diffusion import noised_views
from cameo_cli.image_metrics import psnr, sharpness
from cameo_cli.match_precision import Radii, precision_scorer
from cameo_cli.pipeline import reference_depth
from cameo_cli.probed import ProbedPass, encode_views, probed_forward
from cameo_cli.reference_lines import reference_lines
from cameo_cli.train.objective import denoising_loss

VALIDATION_TIMESTEP = 500
HELD_OUT_TIMESTEPS = (250, VALIDATION_TIMESTEP, 750)


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
    """`[B, F, 3, H, W]` in [0, 1]: references as given, targets sampled by `pipeline` (with
    the references' depth from the batch's point maps when it has them)."""
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
            depths=reference_depth(batch, b),
        ).images
        out[b][~refs] = generated.to(out.dtype)
    return out


def target_psnr(views: torch.Tensor, batch: ViewBatch) -> float:
    """Mean PSNR over the target views of `views` [B, F, 3, H, W] in [0, 1]."""
    targets = ~batch.ref_mask.cpu()
    truth = ((batch.images.cpu() + 1) / 2)[targets]
    return psnr(views[targets].cpu().clamp(0, 1), truth).mean().item()


def target_sharpness(views: torch.Tensor, batch: ViewBatch) -> float:
    """Mean sharpness over the target views of `views` [B, F, 3, H, W] in [0, 1]."""
    targets = ~batch.ref_mask.cpu()
    truth = ((batch.images.cpu() + 1) / 2)[targets]
    return sharpness(views[targets].cpu().clamp(0, 1), truth).mean().item()


def reference_line_psnr(batch: ViewBatch) -> dict[str, float]:
    """`val/line_<line>_psnr`: the mean PSNR over the batch's target views of each reference
    line, and `val/line_reproject_seen`, the mean share of pixels seen (with point maps)."""
    batch = batch.to("cpu")
    images = (batch.images + 1) / 2
    values: dict[str, list[torch.Tensor]] = {}
    for b in range(batch.batch_size):
        point_map = None if batch.point_map is None else batch.point_map[b]
        point_valid = None if batch.point_valid is None else batch.point_valid[b]
        refs = batch.ref_mask[b]
        lines = reference_lines(
            images[b], batch.intrinsics[b], batch.world_to_camera[b], refs, point_map, point_valid
        )
        for line, guess in lines.images().items():
            values.setdefault(f"val/line_{line}_psnr", []).append(psnr(guess, images[b][~refs]))
        if lines.seen is not None:
            values.setdefault("val/line_reproject_seen", []).append(lines.seen)
    return {name: torch.cat(parts).mean().item() for name, parts in values.items()}


def fixed_noise_pass(
    backbone: MultiViewBackbone,
    latents: torch.Tensor,
    scheduler: DDPMScheduler,
    batch: ViewBatch,
    timestep: int,
    *,
    seed: int,
    probe: tuple[int, tuple[int, int]] | None = None,
) -> ProbedPass:
    """The batch's `latents` (`encode_views`) noised to `timestep` on the targets with noise
    from `seed` (the same noise at every timestep), references clean; `probe` = (layer,
    token grid) also captures that layer."""
    b = latents.shape[0]
    device = latents.device
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    timesteps = torch.full((b,), timestep, device=device, dtype=torch.long)
    noised = noised_views(scheduler, latents, noise, timesteps, batch.ref_mask)
    probes = {probe[0]: probe[1]} if probe is not None else None
    return probed_forward(backbone, batch, noised, probes=probes)


def _one_step_images(codec, scheduler: DDPMScheduler, batch: ViewBatch, run: ProbedPass):
    """`[B, F, 3, H, W]` in [0, 1]: references as given, targets as x̂0 of `run`."""
    images, ref_mask = batch.images, batch.ref_mask
    b, f = images.shape[:2]
    timestep = int(run.noised.timesteps[0])
    x0 = predicted_x0(scheduler, run.noised.noisy, run.output, timestep)
    decoded = codec.decode(x0.flatten(0, 1)).unflatten(0, (b, f))
    decoded = torch.where(ref_mask[:, :, None, None, None], images, decoded.to(images.dtype))
    return ((decoded.float() + 1) / 2).clamp(0, 1).cpu()


@torch.no_grad()
def one_step_views(
    backbone: MultiViewBackbone,
    codec,
    scheduler: DDPMScheduler,
    batch: ViewBatch,
    *,
    seed: int,
    timestep: int = VALIDATION_TIMESTEP,
) -> torch.Tensor:
    """`[B, F, 3, H, W]` in [0, 1]: references as given, targets as x̂0 at `timestep`."""
    batch = batch.to(next(backbone.parameters()).device)
    latents = encode_views(codec, batch)
    run = fixed_noise_pass(backbone, latents, scheduler, batch, timestep, seed=seed)
    return _one_step_images(codec, scheduler, batch, run)


def attention_precision(
    probe: ProbeResult,
    batch: ViewBatch,
    epsilon: float,
    argmax: MatchScorer = head_averaged_argmax,
) -> dict[str, float]:
    """The probed layer's correspondence against per-pair truth, scored as diagnose scores
    it (`match_precision.precision_scorer`): the share of kept rows whose `argmax` key (by
    default of the head-averaged attention) is the true one (`exact`) or within one token
    (`within1`)."""
    score = precision_scorer(probe, batch, Radii(tokens=1.0), epsilon)
    counts = score(predicted_matches(probe, argmax))
    rows = int(counts.rows.sum())
    if not rows:
        return {}
    hits = counts.hits.sum(dim=1).float() / rows  # float32, as validation always logged them
    exact, within = (hits[counts.metrics.index(m)].item() for m in ("exact", "tokens"))
    return {"exact": exact, "within1": within}


@torch.no_grad()
def held_out_metrics(
    backbone: MultiViewBackbone,
    codec,
    scheduler: DDPMScheduler,
    batch: ViewBatch,
    *,
    seed: int,
    probe: tuple[int, tuple[int, int]] | None,
    epsilon: float,
    scorer: MatchScorer | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """Cheap, low-variance convergence metrics of a fixed held-out batch (fixed noise):
    `val/denoise_t*` (the training loss on target views) at `HELD_OUT_TIMESTEPS`,
    `val/psnr_x0` (the one-step x̂0 at t = 500) and, with point maps and `probe` = (layer,
    grid), `val/precision` and `val/precision_1tok` of that layer's attention at t = 500;
    with the method's `scorer` of that layer (`AlignmentMethod.match_scorer`, CAMEO's
    projection head) also `val/precision_head` and `val/precision_head_1tok`. Returns the
    metrics and the one-step views."""
    batch = batch.to(next(backbone.parameters()).device)
    metrics: dict[str, float] = {}
    one_step = None
    latents = encode_views(codec, batch)  # once for every timestep
    for timestep in HELD_OUT_TIMESTEPS:
        at_probe = timestep == VALIDATION_TIMESTEP
        run = fixed_noise_pass(
            backbone, latents, scheduler, batch, timestep, seed=seed,
            probe=probe if at_probe and batch.point_map is not None else None,
        )  # fmt: skip
        loss = denoising_loss(run.output, run.noised, batch.ref_mask, scheduler, None)
        metrics[f"val/denoise_t{timestep}"] = loss.item()
        if at_probe:
            one_step = _one_step_images(codec, scheduler, batch, run)
            metrics["val/psnr_x0"] = target_psnr(one_step, batch)
            if run.probes:
                scorers = {"val/precision": head_averaged_argmax}
                if scorer is not None:
                    scorers["val/precision_head"] = scorer
                for name, argmax in scorers.items():
                    precision = attention_precision(run.probes[probe[0]], batch, epsilon, argmax)
                    if precision:
                        metrics[name] = precision["exact"]
                        metrics[f"{name}_1tok"] = precision["within1"]
    return metrics, one_step


def grid_image(images: torch.Tensor) -> np.ndarray:
    """`[B, R, F, 3, H, W]` in [0, 1] as one uint8 image: per sample R rows of F views."""
    grid = rearrange(images, "b r f c h w -> (b r h) (f w) c")
    return (grid.numpy() * 255).round().astype(np.uint8)
