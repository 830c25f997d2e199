"""`cameo sample` as a library call: read the inputs, check them all, sample, write.

Every input is read and checked before the model is loaded, and the outputs are written to
a staging folder renamed into place at the end, so bad input leaves no partial output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from cameo_cli import files
from cameo_cli.camera_files import CameraSet, match_cameras, read_cameras, to_cameo_json
from cameo_cli.errors import CameoError
from cameo_cli.pipeline import MultiViewPipeline, PreparedViews
from cameo_cli.reference_geometry import (
    MIN_REFERENCES,
    ONE_REFERENCE,
    ReferenceDepth,
    ReferenceVGGT,
    check_vggt_option,
)
from cameo_cli.sample import outputs, trajectories

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# An image may differ this much in aspect ratio from the size its camera file states.
ASPECT_TOLERANCE = 0.01


@dataclass
class SampleRequest:
    """What `cameo sample` was asked to do (None = the checkpoint recipe's value)."""

    checkpoint: Path
    views: list[Path]
    cameras: Path
    out: Path
    targets: Path | None = None
    orbit: int | None = None
    interpolate: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    resolution: int | None = None
    video: str | None = None  # "mp4" or "gif"
    overwrite: bool = False
    device: str | None = None
    precision: str = "auto"
    depths: list[Path] | None = None  # one .npy z-depth map per reference (geometric priors)
    reference_depth: str | None = None  # "vggt": depth by VGGT from the references (no --depths)
    vggt_weights: Path | None = None


def load_image(path: Path) -> torch.Tensor:
    """An RGB image file -> [3, H, W] float in [0, 1]."""
    array = files.read_image(path)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def load_depth(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A reference's z-depth map: a .npy float array [H, W] the size of its image, in the
    world units of its camera (0 or non-finite = unknown)."""
    depth = files.read_npy(path, "depth map")
    if depth.ndim != 2 or depth.dtype.kind not in "fiu":
        raise CameoError(
            f"{path}: a depth map must be a 2D numeric array, got {depth.dtype} {list(depth.shape)}"
        )
    if tuple(depth.shape) != size:
        raise CameoError(
            f"{path}: depth map is {depth.shape[0]}x{depth.shape[1]}, "
            f"its image is {size[0]}x{size[1]}"
        )
    return depth.astype(np.float32)


def _check_sizes(camera_set: CameraSet, images: list[torch.Tensor], request: SampleRequest):
    for i, image in enumerate(images):
        stated = camera_set.image_sizes[i]
        height, width = image.shape[-2:]
        if stated is not None and abs(stated[1] / stated[0] - width / height) > ASPECT_TOLERANCE:
            raise CameoError(
                f"{request.cameras}: camera {camera_set.names[i]} is for a "
                f"{stated[1]}x{stated[0]} image but {request.views[i]} is {width}x{height}"
            )


def _read_targets(request: SampleRequest) -> CameraSet | None:
    """The target camera file (None for --orbit / --interpolate), checked early."""
    chosen = (request.targets, request.orbit, request.interpolate)
    if sum(choice is not None for choice in chosen) != 1:
        raise CameoError("give exactly one of --targets FILE, --orbit N and --interpolate N")
    return read_cameras(request.targets) if request.targets is not None else None


def _trajectory_targets(
    request: SampleRequest, references: CameraSet, sizes: list, resolution: int
) -> CameraSet:
    """--orbit / --interpolate: target cameras from the references' cameras at `resolution`."""
    make = trajectories.orbit if request.orbit is not None else trajectories.interpolate
    count = request.orbit if request.orbit is not None else request.interpolate
    K, w2c = make(*references.at_resolution(sizes, resolution), count)
    return CameraSet.from_pixel(K, w2c, (resolution, resolution))


def _check_reference_depth(request: SampleRequest, references: int) -> None:
    """--reference-depth vggt: one source of depth, VGGT available, 2+ references."""
    if request.reference_depth not in (None, "vggt"):
        raise CameoError(f"--reference-depth must be vggt, got {request.reference_depth!r}")
    if request.reference_depth and request.depths:
        raise CameoError("give either --depths FILES or --reference-depth vggt, not both")
    check_vggt_option(request.reference_depth, request.vggt_weights)
    if request.reference_depth and references < MIN_REFERENCES:
        raise CameoError(f"{ONE_REFERENCE}, got {references} --views")


def _vggt_depth(
    request: SampleRequest, views: PreparedViews, w2c: torch.Tensor, device: torch.device
) -> ReferenceDepth:
    """The references' depth estimated by VGGT from the prepared reference images."""
    try:
        return ReferenceVGGT(request.vggt_weights, device=device)(views.images, w2c)
    except CameoError as error:
        raise CameoError(f"{request.cameras}: {error}") from None


def _depths_record(request: SampleRequest, vggt_fit: dict | None) -> object:
    """sample.json's `depths`: the --depths files, VGGT's fit, or None (zero priors)."""
    if request.depths:
        return [str(path) for path in request.depths]
    if vggt_fit is not None:
        return {"source": "vggt (the references only)", **vggt_fit}
    return None


def run_sample(request: SampleRequest, console: Console | None = None) -> Path:
    """Sample the target views; returns the output folder."""
    console = console or Console(stderr=True)
    files.check_output_folder(request.out, request.overwrite)
    if not request.views:
        raise CameoError("give at least one reference image with --views")
    if request.video not in (None, "mp4", "gif"):
        raise CameoError(f"--video-format must be mp4 or gif, got {request.video!r}")
    if request.precision != "auto" and request.precision not in PRECISIONS:
        raise CameoError(f"--precision must be auto, {', '.join(PRECISIONS)}")
    images = [load_image(path) for path in request.views]
    camera_set = match_cameras(read_cameras(request.cameras), request.views, request.cameras)
    _check_sizes(camera_set, images, request)
    sizes = [tuple(image.shape[-2:]) for image in images]
    _check_reference_depth(request, len(images))
    depths = None
    if request.depths:
        if len(request.depths) != len(images):
            raise CameoError(
                f"--depths: {len(request.depths)} depth maps for {len(images)} --views (one each)"
            )
        depths = [load_depth(path, size) for path, size in zip(request.depths, sizes, strict=True)]
    target_set = _read_targets(request)

    pipeline = MultiViewPipeline.from_pretrained(
        request.checkpoint,
        scheduler=request.scheduler,
        device=request.device,
        dtype=None if request.precision == "auto" else PRECISIONS[request.precision],
    )
    recipe = pipeline.recipe
    resolution = request.resolution or recipe.data.resolution
    if target_set is None:
        target_set = _trajectory_targets(request, camera_set, sizes, resolution)
    views = pipeline.prepare(images, camera_set, target_set, resolution)
    vggt_fit = None
    if request.reference_depth == "vggt" and not pipeline.backbone.uses_priors:
        console.print(f"backbone '{pipeline.backbone.name}' uses no priors: VGGT is not run")
    elif request.reference_depth == "vggt":
        # VGGT sees the references as the model does: at the sampling size
        estimated = _vggt_depth(request, views, camera_set.world_to_camera, pipeline.device)
        images, depths, vggt_fit = views.images, estimated.depth, estimated.fit()
        camera_set = CameraSet.from_pixel(
            views.reference_intrinsics.double(), camera_set.world_to_camera, (resolution,) * 2
        )
    steps = request.steps or recipe.sample.steps
    guidance = recipe.sample.guidance if request.guidance is None else request.guidance
    seed = recipe.sample.seed if request.seed is None else request.seed
    ref_K, ref_w2c = views.reference_intrinsics, views.reference_world_to_camera
    target_K, target_w2c = views.target_intrinsics, views.target_world_to_camera

    slots = pipeline.num_views - len(images)
    groups = -(-len(target_w2c) // max(slots, 1))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"sampling {len(target_w2c)} views", total=groups * steps)

        def advance(pipeline: MultiViewPipeline, index: int, timestep, tensors: dict) -> dict:
            progress.advance(task, 1)
            return tensors

        result = pipeline(
            images,
            camera_set,
            target_set,
            num_inference_steps=steps,
            guidance_scale=guidance,
            eta=recipe.sample.eta,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
            callback_on_step_end=advance,
            resolution=resolution,
            depths=depths,
        )
    references = views.images

    with files.staged_folder(request.out, request.overwrite) as staging:
        for i, image in enumerate(result.images):
            files.save_png(image, staging / f"target_{i:03d}.png")
        outputs.contact_sheet(references, result.images).save(staging / "contact_sheet.png")
        if request.video:
            outputs.write_video(list(result.images), staging / f"trajectory.{request.video}")
        all_cameras = CameraSet.from_pixel(
            torch.cat([ref_K, target_K]),
            torch.cat([ref_w2c, target_w2c]),
            (resolution, resolution),
            names=[f"reference_{i:03d}" for i in range(len(images))]
            + [f"target_{i:03d}" for i in range(len(target_w2c))],
        )
        files.write_json(
            staging / "cameras.json",
            to_cameo_json(all_cameras, image_size=(resolution, resolution)),
        )
        files.write_json(
            staging / "sample.json",
            {
                "checkpoint": str(request.checkpoint),
                "views": [str(path) for path in request.views],
                "resolution": resolution,
                "scheduler": request.scheduler or recipe.sample.scheduler,
                "steps": steps,
                "guidance": guidance,
                "eta": recipe.sample.eta,
                "seed": seed,
                "depths": _depths_record(request, vggt_fit),
                "targets": len(target_w2c),
                "device": str(pipeline.device),
                "precision": str(pipeline.dtype).removeprefix("torch."),
            },
        )
    return request.out
