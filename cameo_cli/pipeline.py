"""Novel-view sampling: reference images + their cameras + target cameras -> target images.

    pipeline = MultiViewPipeline.from_checkpoint("runs/quickstart")
    images = pipeline(ref_images, ref_K, ref_w2c, target_K, target_w2c, seed=0).images

DDIM (50 steps by default) with classifier-free guidance on the cameras (2.0 by default;
the unconditional branch zeroes the camera channels, `ViewConditioning.drop_camera`). The
backbone sees F = N references + (F - N) targets at a time; the references stay clean at
every step (only the target latents are stepped) and more targets than fit are processed in
groups, the last one padded with copies of its final camera. Images are float in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cameo_cli.backbone import MultiViewBackbone, ViewConditioning
from cameo_cli.batch import domain_index
from cameo_cli.codec import ImageCodec, load_codec
from cameo_cli.config import DataConfig, DiffusionConfig, Recipe
from cameo_cli.diffusion import make_sampler
from cameo_cli.errors import CameoError


@dataclass
class SampleOutput:
    """Generated target views, `[M, 3, H, W]` float32 in [0, 1] on the CPU."""

    images: torch.Tensor


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it, else fp16 on GPUs, fp32 on the CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class MultiViewPipeline:
    """A trained multi-view backbone with its codec and noise schedule."""

    def __init__(
        self,
        backbone: MultiViewBackbone,
        codec: ImageCodec,
        diffusion: DiffusionConfig,
        num_views: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        domain: str = DataConfig.domain,
    ) -> None:
        self.backbone = backbone.eval()
        self.domain = domain_index(domain)  # the recipe's data.domain
        self.codec = codec.eval()
        self.diffusion = diffusion
        self.num_views = num_views
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype if dtype is not None else default_dtype(self.device)
        self.backbone.to(self.device)
        self.codec.to(self.device)
        self.recipe: Recipe | None = None  # set by `from_checkpoint`
        self.step: int | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MultiViewPipeline:
        """Load a run folder (its latest checkpoint) or one checkpoint folder."""
        from cameo_cli.checkpoints import load_for_inference

        device = torch.device(device) if device is not None else default_device()
        loaded = load_for_inference(path, device=device)
        recipe: Recipe = loaded.recipe
        if loaded.backbone.name != recipe.backbone.name:
            raise CameoError(
                f"{path}: the checkpoint holds a '{loaded.backbone.name}' backbone but its "
                f"recipe names '{recipe.backbone.name}'"
            )
        pipeline = cls(
            loaded.backbone,
            load_codec(recipe.codec),
            recipe.diffusion,
            recipe.data.num_views,
            device=device,
            dtype=dtype,
            domain=recipe.data.domain,
        )
        pipeline.recipe, pipeline.step = recipe, loaded.step
        return pipeline

    @torch.no_grad()
    def __call__(
        self,
        reference_images: torch.Tensor,
        reference_intrinsics: torch.Tensor,
        reference_world_to_camera: torch.Tensor,
        target_intrinsics: torch.Tensor,
        target_world_to_camera: torch.Tensor,
        *,
        steps: int = 50,
        guidance: float = 2.0,
        eta: float = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> SampleOutput:
        """Generate M target views.

        - `reference_images` [N, 3, H, W] in [0, 1]; `*_intrinsics` pixel K for H x W;
          `*_world_to_camera` OpenCV w2c. Targets: K [M, 3, 3], w2c [M, 4, 4].
        - `seed` (or an explicit CPU `generator`) makes the result reproducible; the initial
          noise is drawn on the CPU so a seed gives the same noise on every device.
        - `progress(n)` is called after every denoising step of every group.
        """
        references, count = reference_images.shape[0], target_world_to_camera.shape[0]
        slots = self.num_views - references
        if slots < 1:
            raise CameoError(
                f"{references} reference views leave no room for a target: this model "
                f"sees {self.num_views} views at a time (at most {self.num_views - 1} references)"
            )
        if (
            reference_intrinsics.shape[0] != references
            or reference_world_to_camera.shape[0] != references
        ):
            raise CameoError(f"{references} reference images need {references} cameras")
        if count < 1 or target_intrinsics.shape[0] != count:
            raise CameoError("give at least one target camera (intrinsics and pose per target)")
        if steps < 1:
            raise CameoError(f"steps must be at least 1, got {steps}")
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)

        height, width = reference_images.shape[-2:]
        latent_h, latent_w = self.codec.latent_size((height, width))
        groups = -(-count // slots)
        noise = torch.randn(
            (groups * slots, self.codec.channels, latent_h, latent_w),
            generator=generator,
            dtype=torch.float32,
        )
        images = reference_images.to(self.device, torch.float32) * 2 - 1
        with self._autocast():
            reference_latents = self.codec.encode(images).float()

        outputs = []
        for group in range(groups):
            chosen = torch.arange(group * slots, (group + 1) * slots).clamp(max=count - 1)
            latents = self._denoise(
                images,
                reference_latents,
                noise[group * slots : (group + 1) * slots].to(self.device),
                torch.cat([reference_intrinsics, target_intrinsics[chosen]]),
                torch.cat([reference_world_to_camera, target_world_to_camera[chosen]]),
                steps=steps,
                guidance=guidance,
                eta=eta,
                generator=generator,
                progress=progress,
            )
            take = min(slots, count - group * slots)
            with self._autocast():
                decoded = self.codec.decode(latents[:take])
            outputs.append(((decoded.float() + 1) / 2).clamp(0, 1).cpu())
        return SampleOutput(torch.cat(outputs))

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
        )

    def _denoise(
        self,
        images: torch.Tensor,
        reference_latents: torch.Tensor,
        noise: torch.Tensor,
        intrinsics: torch.Tensor,
        world_to_camera: torch.Tensor,
        *,
        steps: int,
        guidance: float,
        eta: float,
        generator: torch.Generator,
        progress: Callable[[int], None] | None,
    ) -> torch.Tensor:
        """One group: N clean references + F - N noisy targets -> the targets' latents."""
        references = reference_latents.shape[0]
        views = references + noise.shape[0]
        sampler = make_sampler(self.diffusion)
        sampler.set_timesteps(steps, device=self.device)
        guided = guidance != 1.0
        batch = 2 if guided else 1

        # Target views have no image: `from_views` blanks whatever stands in their place.
        view_images = torch.cat([images, images.new_zeros(views - references, *images.shape[1:])])
        ref_mask = torch.arange(views, device=self.device) < references
        cond = ViewConditioning.from_views(
            _batched(view_images, batch),
            _batched(intrinsics.to(self.device, torch.float32), batch),
            _batched(world_to_camera.to(self.device, torch.float32), batch),
            _batched(ref_mask, batch),
            drop_camera=torch.tensor([False, True][:batch], device=self.device),
            domain=torch.full((batch,), self.domain, device=self.device),
        )
        self.backbone.set_num_views(views)
        targets = noise * sampler.init_noise_sigma
        for timestep in sampler.timesteps:
            latents = _batched(torch.cat([reference_latents, targets]), batch)
            model_input = sampler.scale_model_input(latents, timestep)
            timesteps = torch.full((batch,), float(timestep), device=self.device)
            with self._autocast():
                prediction = self.backbone(model_input, timesteps, cond).float()
            prediction = prediction[:, references:]
            if guided:
                conditional, unconditional = prediction
                prediction = unconditional + guidance * (conditional - unconditional)
            else:
                prediction = prediction[0]
            targets = sampler.step(
                prediction, timestep, targets, eta=eta, generator=generator
            ).prev_sample
            if progress is not None:
                progress(1)
        return targets


def _batched(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """`batch` copies of one sample's tensor along a new leading dimension."""
    return tensor[None].repeat(batch, *([1] * tensor.dim()))
