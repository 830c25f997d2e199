"""Novel-view sampling in diffusers' conventions: reference images + their cameras + target
cameras -> target images.

    pipeline = MultiViewPipeline.from_pretrained("runs/quickstart")   # run, checkpoint, export
    pipeline.use_scheduler("dpm-solver++")
    images = pipeline(
        [Image.open("a.png"), Image.open("b.png")],   # PIL images or [N, 3, H, W] in [0, 1]
        read_cameras("refs.json"),                    # a CameraSet per image
        read_cameras("targets.json"),                 # the target cameras
        num_inference_steps=20,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
    ).images                                          # a list of PIL images

Schedulers (`SAMPLERS` in `cameo_cli.diffusion`): DDIM, DPM-Solver++ or UniPC, all with the
training betas. Classifier-free guidance is on the cameras: the unconditional branch zeroes the
camera channels (`ViewConditioning.drop_camera`). The backbone sees F = N references +
(F - N) targets at a time; the references stay clean at every step (only the target latents
are stepped) and more targets than fit are processed in groups, the last one padded with
copies of its final camera.

Geometric priors (MVGenMaster, `backbone.uses_priors`): `depths=` gives each reference's
z-depth map ([H, W] at its image's size, in the world units of its camera; 0, negative or
non-finite = unknown); it is resized and cropped like the image (nearest), unprojected with
the reference's camera into a point map and passed as `ViewConditioning.point_map`. Without
it such a backbone samples with zero priors, and the pipeline says so once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cameo_cli import cameras as camera_math
from cameo_cli import files
from cameo_cli.backbone import MultiViewBackbone, ViewConditioning
from cameo_cli.batch import ViewBatch, domain_index
from cameo_cli.camera_files import CameraSet
from cameo_cli.codec import ImageCodec, load_codec
from cameo_cli.config import DataConfig, DiffusionConfig, Recipe
from cameo_cli.diffusion import make_sampler
from cameo_cli.errors import CameoError

log = logging.getLogger(__name__)

ImageInput = Image.Image | torch.Tensor | Sequence[Image.Image | torch.Tensor]
DepthInput = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]
# callback_on_step_end(pipeline, step index in the group, timestep, {"latents": targets})
# returns the dict, with "latents" possibly replaced.
StepCallback = Callable[["MultiViewPipeline", int, torch.Tensor, dict], dict]
OUTPUT_TYPES = ("pil", "np", "pt")
# Argument names of cameo 0.1.0's pipeline call -> their diffusers names.
_RENAMED = {
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "seed": "generator (torch.Generator().manual_seed(seed))",
    "progress": "callback_on_step_end",
}


@dataclass
class MultiViewPipelineOutput:
    """Generated target views: M PIL images ("pil"), a float32 [M, H, W, 3] array in [0, 1]
    ("np") or a float32 [M, 3, H, W] CPU tensor in [0, 1] ("pt")."""

    images: list[Image.Image] | np.ndarray | torch.Tensor


@dataclass
class PreparedViews:
    """The call's inputs at the sampling size: images [N, 3, R, R] in [0, 1], pixel
    intrinsics / OpenCV world-to-camera (float32) of references and targets, and the
    references' z-depth [N, R, R] when given (0 where unknown)."""

    images: torch.Tensor
    reference_intrinsics: torch.Tensor
    reference_world_to_camera: torch.Tensor
    target_intrinsics: torch.Tensor
    target_world_to_camera: torch.Tensor
    reference_depth: torch.Tensor | None = None

    def reference_points(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(world points [N, 3, R, R], valid [N, R, R]) of the references' depth, or None."""
        if self.reference_depth is None:
            return None
        depth = self.reference_depth
        valid = torch.isfinite(depth) & (depth > 0)
        depth = torch.where(valid, depth, torch.zeros_like(depth))
        points = camera_math.unproject_depth(
            depth, self.reference_intrinsics, self.reference_world_to_camera
        )
        return points, valid


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it, else fp16 on GPUs, fp32 on the CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resize_center_crop(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Shorter side to `resolution` (bicubic, as `cameo prepare`), then a centre square."""
    height, width = image.shape[-2:]
    box = camera_math.resize_center_crop_box((height, width), resolution)
    resized_h, resized_w, top, left = box
    picture = Image.fromarray(files.to_uint8(image))
    if (resized_w, resized_h) != picture.size:
        picture = picture.resize((resized_w, resized_h), Image.Resampling.BICUBIC)
    array = np.asarray(picture)[top : top + resolution, left : left + resolution]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def resize_center_crop_depth(depth: torch.Tensor, resolution: int) -> torch.Tensor:
    """A depth map [H, W] resized (nearest: no depth is blended across an edge) and
    centre-cropped exactly like its image (`resize_center_crop`)."""
    resized_h, resized_w, top, left = camera_math.resize_center_crop_box(
        tuple(depth.shape), resolution
    )
    resized = F.interpolate(depth[None, None], size=(resized_h, resized_w), mode="nearest-exact")
    return resized[0, 0, top : top + resolution, left : left + resolution]


def depth_tensors(depths: DepthInput, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """One z-depth map [H, W] per reference, each the size of its image -> float32 tensors."""
    if isinstance(depths, torch.Tensor | np.ndarray):
        depths = list(depths)
    if len(depths) != len(sizes):
        raise CameoError(
            f"{len(sizes)} reference images need {len(sizes)} depth maps, got {len(depths)}"
        )
    out = []
    for i, (depth, size) in enumerate(zip(depths, sizes, strict=True)):
        depth = torch.as_tensor(depth)
        if depth.dim() != 2 or tuple(depth.shape) != size:
            raise CameoError(
                f"depth map {i} is {list(depth.shape)}, its image is {size[0]}x{size[1]}: give "
                "one [H, W] z-depth map per reference, the size of its image"
            )
        out.append(depth.float().cpu())
    return out


def image_tensors(images: ImageInput) -> list[torch.Tensor]:
    """PIL images or tensors ([3, H, W] or [N, 3, H, W] in [0, 1]) -> [3, H, W] float32."""
    if isinstance(images, Image.Image):
        images = [images]
    elif isinstance(images, torch.Tensor):
        images = list(images) if images.dim() == 4 else [images]
    out = []
    for image in images:
        if isinstance(image, Image.Image):
            array = np.asarray(image.convert("RGB"))
            image = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
        elif not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            raise CameoError("images must be PIL images or [3, H, W] / [N, 3, H, W] tensors")
        out.append(image.float().cpu())
    return out


class MultiViewPipeline:
    """A trained multi-view backbone with its codec and a sampler built from its betas."""

    def __init__(
        self,
        backbone: MultiViewBackbone,
        codec: ImageCodec,
        diffusion: DiffusionConfig,
        num_views: int,
        *,
        scheduler: str = "ddim",
        resolution: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        domain: str = DataConfig.domain,
    ) -> None:
        """`resolution`: images are resized and centre-cropped to this square size (None:
        sampled at their own size, which they must share)."""
        self.backbone = backbone.eval()
        self.domain = domain_index(domain)  # the recipe's data.domain
        self.codec = codec.eval()
        self.diffusion = diffusion
        self.scheduler = make_sampler(diffusion, scheduler)
        self.num_views = num_views
        self.resolution = resolution
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype if dtype is not None else default_dtype(self.device)
        self.backbone.to(self.device)
        self.codec.to(self.device)
        self.recipe: Recipe | None = None  # set by `from_pretrained`
        self.step: int | None = None
        self._warned_no_depth = False

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        scheduler: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MultiViewPipeline:
        """Load a run folder (its latest checkpoint), one checkpoint folder or a folder
        written by `cameo export`; `scheduler` defaults to the recipe's `sample.scheduler`."""
        from cameo_cli.run_folder.checkpoints import load_for_inference

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
            scheduler=scheduler or recipe.sample.scheduler,
            resolution=recipe.data.resolution,
            device=device,
            dtype=dtype,
            domain=recipe.data.domain,
        )
        pipeline.recipe, pipeline.step = recipe, loaded.step
        return pipeline

    def use_scheduler(self, name: str) -> None:
        """Sample with another of `SAMPLERS` (ddim, dpm-solver++, unipc), same betas."""
        self.scheduler = make_sampler(self.diffusion, name)

    def prepare(
        self,
        images: ImageInput,
        cameras: CameraSet,
        target_cameras: CameraSet,
        resolution: int | None = None,
        depths: DepthInput | None = None,
    ) -> PreparedViews:
        """Images, cameras and the references' depth (optional) at the sampling size
        (`resolution`, else the pipeline's)."""
        if not isinstance(cameras, CameraSet) or not isinstance(target_cameras, CameraSet):
            raise CameoError(
                "give the cameras as CameraSets (cameo_cli.camera_files: read_cameras(path) or "
                "CameraSet.from_pixel(K, world_to_camera, (H, W))), references then targets"
            )
        tensors = image_tensors(images)
        if len(cameras) != len(tensors):
            raise CameoError(f"{len(tensors)} reference images need {len(tensors)} cameras")
        if len(target_cameras) < 1:
            raise CameoError("give at least one target camera")
        sizes = [tuple(image.shape[-2:]) for image in tensors]
        depth = None if depths is None else depth_tensors(depths, sizes)
        resolution = resolution or self.resolution
        if resolution is None:
            if len(set(sizes)) > 1:
                raise CameoError(f"reference images differ in size ({sorted(set(sizes))})")
            ref_K = cameras.pixel_intrinsics(sizes)
            target_K = target_cameras.pixel_intrinsics([sizes[0]] * len(target_cameras))
            stacked = torch.stack(tensors)
            depth = None if depth is None else torch.stack(depth)
        else:
            ref_K, _ = cameras.at_resolution(sizes, resolution)
            target_sizes = [size or sizes[0] for size in target_cameras.image_sizes]
            target_K, _ = target_cameras.at_resolution(target_sizes, resolution)
            stacked = torch.stack(
                [
                    image
                    if image.shape[-2:] == (resolution, resolution)
                    else resize_center_crop(image, resolution)
                    for image in tensors
                ]
            )
            if depth is not None:
                depth = torch.stack([resize_center_crop_depth(d, resolution) for d in depth])
        return PreparedViews(
            stacked,
            ref_K.float(),
            cameras.world_to_camera.float(),
            target_K.float(),
            target_cameras.world_to_camera.float(),
            depth,
        )

    @torch.no_grad()
    def __call__(
        self,
        images: ImageInput,
        cameras: CameraSet,
        target_cameras: CameraSet,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        callback_on_step_end: StepCallback | None = None,
        resolution: int | None = None,
        depths: DepthInput | None = None,
        **renamed: Any,
    ) -> MultiViewPipelineOutput:
        """Generate one view per target camera.

        - `images`: N PIL images or tensors in [0, 1]; `cameras`: their N cameras;
          `target_cameras`: M cameras (sizes they state, else the first image's).
        - `generator`: a CPU generator; the initial noise is drawn on the CPU, so a seed gives
          the same noise on every device (None: torch's global generator).
        - `eta`: DDIM's stochasticity (0 deterministic); other schedulers take none.
        - `callback_on_step_end(pipeline, i, t, {"latents": ...})` after every step of every
          group; it returns the dict, whose "latents" replace the group's target latents.
        - `depths`: the references' z-depth maps (see the module docstring), for backbones
          with geometric priors.
        """
        for old in renamed:
            new = _RENAMED.get(old)
            if new is None:
                raise TypeError(f"MultiViewPipeline() got an unexpected argument {old!r}")
            raise CameoError(f"MultiViewPipeline: {old!r} is now {new}, as in diffusers")
        if output_type not in OUTPUT_TYPES:
            raise CameoError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}")
        if num_inference_steps < 1:
            raise CameoError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        step_options = inspect.signature(self.scheduler.step).parameters
        if eta != 0 and "eta" not in step_options:
            raise CameoError(f"eta {eta}: only the ddim scheduler takes eta")
        if generator is not None and generator.device.type != "cpu":
            raise CameoError("give a CPU generator: the noise is drawn on the CPU")
        views = self.prepare(images, cameras, target_cameras, resolution, depths)
        self._check_priors(views)
        references, count = views.images.shape[0], views.target_world_to_camera.shape[0]
        slots = self.num_views - references
        if slots < 1:
            raise CameoError(
                f"{references} reference views leave no room for a target: this model "
                f"sees {self.num_views} views at a time (at most {self.num_views - 1} references)"
            )
        height, width = views.images.shape[-2:]
        latent_h, latent_w = self.codec.latent_size((height, width))
        groups = -(-count // slots)
        noise = torch.randn(
            (groups * slots, self.codec.channels, latent_h, latent_w),
            generator=generator,
            dtype=torch.float32,
        )
        pixels = views.images.to(self.device, torch.float32) * 2 - 1
        with self._autocast():
            reference_latents = self.codec.encode(pixels).float()

        outputs = []
        for group in range(groups):
            chosen = torch.arange(group * slots, (group + 1) * slots).clamp(max=count - 1)
            latents = self._denoise(
                pixels,
                reference_latents,
                noise[group * slots : (group + 1) * slots].to(self.device),
                torch.cat([views.reference_intrinsics, views.target_intrinsics[chosen]]),
                torch.cat([views.reference_world_to_camera, views.target_world_to_camera[chosen]]),
                views.reference_points(),
                steps=num_inference_steps,
                guidance=guidance_scale,
                step_options={
                    k: v for k, v in (("eta", eta), ("generator", generator)) if k in step_options
                },
                callback=callback_on_step_end,
            )
            take = min(slots, count - group * slots)
            with self._autocast():
                decoded = self.codec.decode(latents[:take])
            outputs.append(((decoded.float() + 1) / 2).clamp(0, 1).cpu())
        result = torch.cat(outputs)
        if output_type == "pt":
            return MultiViewPipelineOutput(result)
        if output_type == "np":
            return MultiViewPipelineOutput(result.permute(0, 2, 3, 1).numpy())
        return MultiViewPipelineOutput([Image.fromarray(files.to_uint8(image)) for image in result])

    def _check_priors(self, views: PreparedViews) -> None:
        """Say once when a backbone with geometric priors samples without them."""
        if (
            views.reference_depth is None
            and self.backbone.uses_priors
            and not self._warned_no_depth
        ):
            self._warned_no_depth = True
            log.warning(
                "backbone '%s' uses geometric priors but no reference depth was given "
                "(depths=, `cameo sample --depths`): sampling with zero priors",
                self.backbone.name,
            )

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
        reference_points: tuple[torch.Tensor, torch.Tensor] | None,
        *,
        steps: int,
        guidance: float,
        step_options: dict[str, Any],
        callback: StepCallback | None,
    ) -> torch.Tensor:
        """One group: N clean references + F - N noisy targets -> the targets' latents."""
        references = reference_latents.shape[0]
        views = references + noise.shape[0]
        sampler = self.scheduler
        sampler.set_timesteps(steps, device=self.device)
        guided = guidance != 1.0
        batch = 2 if guided else 1

        # Target views have no image: `from_views` blanks whatever stands in their place.
        view_images = torch.cat([images, images.new_zeros(views - references, *images.shape[1:])])
        ref_mask = torch.arange(views, device=self.device) < references
        point_map = point_valid = None
        if reference_points is not None:
            points, valid = (t.to(self.device) for t in reference_points)
            point_map = _batched(
                torch.cat([points, points.new_zeros(views - references, *points.shape[1:])]), batch
            )
            point_valid = _batched(
                torch.cat([valid, valid.new_zeros(views - references, *valid.shape[1:])]), batch
            )
        cond = ViewConditioning.from_views(
            _batched(view_images, batch),
            _batched(intrinsics.to(self.device, torch.float32), batch),
            _batched(world_to_camera.to(self.device, torch.float32), batch),
            _batched(ref_mask, batch),
            drop_camera=torch.tensor([False, True][:batch], device=self.device),
            point_map=point_map,
            point_valid=point_valid,
            domain=torch.full((batch,), self.domain, device=self.device),
        )
        self.backbone.set_num_views(views)
        targets = noise * sampler.init_noise_sigma
        for index, timestep in enumerate(sampler.timesteps):
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
            targets = sampler.step(prediction, timestep, targets, **step_options).prev_sample
            if callback is not None:
                targets = callback(self, index, timestep, {"latents": targets})["latents"]
        return targets


def reference_depth(batch: ViewBatch, sample: int) -> torch.Tensor | None:
    """[N, H, W] z-depth of sample `sample`'s references from its point map (0 where not
    valid), or None when the batch has no geometry."""
    if batch.point_map is None:
        return None
    refs = batch.ref_mask[sample]
    depth = camera_math.point_map_depth(
        batch.point_map[sample][refs], batch.world_to_camera[sample][refs]
    )
    return torch.where(batch.point_valid[sample][refs], depth, torch.zeros_like(depth))


def _batched(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """`batch` copies of one sample's tensor along a new leading dimension."""
    return tensor[None].repeat(batch, *([1] * tensor.dim()))
