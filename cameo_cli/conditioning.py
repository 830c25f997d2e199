"""Camera conditioning shared by every adapter (built-in or plugin).

A multi-view backbone sees its cameras as `camera_condition_maps`: a 6-channel Plücker
raymap (relative to view 0, `cameo_cli.cameras.plucker_raymap`), zeroed for the samples
whose `drop_camera` is set (classifier-free guidance), then a 1-channel reference mask,
all at the latent resolution. The maps enter the wrapped model through a zero-initialised
layer (`zero_conv`) whose output is added to one of the model's own outputs
(`added_to_output`), so that at initialisation the backbone predicts exactly what the
wrapped diffusers model does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from cameo_cli.cameras import PIXEL_CENTRE, plucker_raymap

if TYPE_CHECKING:
    from cameo_cli.batch import ViewBatch

CAMERA_CONDITION_CHANNELS = 7  # Plücker direction (3) + moment (3) + reference mask (1)


@dataclass
class ViewConditioning:
    """Everything but the noisy latents that a multi-view backbone is conditioned on."""

    intrinsics: torch.Tensor  # [B, F, 3, 3] pixel intrinsics of an image of `image_size`
    world_to_camera: torch.Tensor  # [B, F, 4, 4] OpenCV convention
    ref_mask: torch.Tensor  # [B, F] bool, True for reference (clean, given) views
    image_size: tuple[int, int]  # (H, W) in pixels that `intrinsics` refer to
    drop_camera: torch.Tensor | None = None  # [B] bool: zero the camera channels (CFG)
    ref_images: torch.Tensor | None = None  # [B, F, 3, H, W] in [-1, 1]; for geometric priors
    point_map: torch.Tensor | None = None  # [B, F, 3, H, W] world frame; for geometric priors
    point_valid: torch.Tensor | None = None  # [B, F, H, W] bool
    domain: torch.Tensor | None = None  # [B] long; for backbones with domain embeddings
    # training-time draws inside the backbone (MVGenMaster's prior dropout): the trainer's
    # generator, so that a resumed run draws the same; None: torch's global generator
    generator: torch.Generator | None = None

    @classmethod
    def from_views(
        cls,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        world_to_camera: torch.Tensor,
        ref_mask: torch.Tensor,
        *,
        drop_camera: torch.Tensor | None = None,
        point_map: torch.Tensor | None = None,
        point_valid: torch.Tensor | None = None,
        domain: torch.Tensor | None = None,
    ) -> ViewConditioning:
        """The conditioning of views `images` [B, F, 3, H, W] in [-1, 1] (the one rule):
        cameras, mask and domain as given; images and point maps of reference views only,
        target views blanked (zero images and points, nothing valid) so nothing of them leaks."""
        refs = ref_mask[:, :, None, None]
        blank = torch.zeros((), dtype=images.dtype, device=images.device)
        cond = cls(
            intrinsics=intrinsics,
            world_to_camera=world_to_camera,
            ref_mask=ref_mask,
            image_size=(images.shape[-2], images.shape[-1]),
            drop_camera=drop_camera,
            ref_images=torch.where(refs[:, :, None], images, blank),
            domain=domain,
        )
        if point_map is not None:
            cond.point_map = torch.where(refs[:, :, None], point_map, blank.to(point_map.dtype))
            cond.point_valid = point_valid & refs
        return cond

    @classmethod
    def from_batch(
        cls,
        batch: ViewBatch,
        *,
        drop_camera: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ViewConditioning:
        """The conditioning of a `ViewBatch` (on its device), by `from_views`'s rule, with
        the trainer's `generator` for the backbone's own training-time draws."""
        cond = cls.from_views(
            batch.images,
            batch.intrinsics,
            batch.world_to_camera,
            batch.ref_mask,
            drop_camera=drop_camera,
            point_map=batch.point_map,
            point_valid=batch.point_valid,
            domain=batch.domain,
        )
        cond.generator = generator
        return cond

    def check(self, batch: int, views: int) -> None:
        """Raise ValueError unless every tensor is shaped for `batch` samples of `views`."""
        expected = {
            "intrinsics": (self.intrinsics, (batch, views, 3, 3)),
            "world_to_camera": (self.world_to_camera, (batch, views, 4, 4)),
            "ref_mask": (self.ref_mask, (batch, views)),
            "drop_camera": (self.drop_camera, (batch,)),
            "domain": (self.domain, (batch,)),
        }
        for name, (tensor, shape) in expected.items():
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(f"cond.{name} is {tuple(tensor.shape)}, expected {shape}")
        for name in ("ref_images", "point_map"):
            tensor = getattr(self, name)
            if tensor is not None and tuple(tensor.shape[:3]) != (batch, views, 3):
                raise ValueError(f"cond.{name} is {tuple(tensor.shape)}, expected [B, F, 3, H, W]")


def camera_condition_maps(
    cond: ViewConditioning,
    height: int,
    width: int,
    *,
    pixel_offset: tuple[float, float] = PIXEL_CENTRE,
) -> torch.Tensor:
    """[B, F, 7, height, width] float32: Plücker raymap (zero where `cond.drop_camera`), then
    the reference mask (1 for reference views; kept when the camera is dropped). The rays go
    through `plucker_raymap`'s grid, shifted by `pixel_offset`."""
    raymap = plucker_raymap(
        cond.intrinsics.float(),
        cond.world_to_camera.float(),
        height,
        width,
        image_size=tuple(cond.image_size),
        pixel_offset=pixel_offset,
    )
    if cond.drop_camera is not None:
        keep = (~cond.drop_camera.bool()).to(raymap.dtype)
        raymap = raymap * keep[:, None, None, None, None]
    batch, views = raymap.shape[:2]
    mask = cond.ref_mask.to(raymap.dtype)[:, :, None, None, None]
    return torch.cat([raymap, mask.expand(batch, views, 1, height, width)], dim=2)


def zero_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
) -> nn.Conv2d:
    """A Conv2d whose weights and bias are all zero (its output is zero until trained)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def camera_patch_tokens(
    encoder: nn.Conv2d, cond: ViewConditioning, height: int, width: int
) -> torch.Tensor:
    """[B·F, tokens, hidden]: `camera_condition_maps` at the latent size (height x width)
    through a patch-embedding conv (kernel = stride = patch), in a DiT's patch-token order."""
    maps = camera_condition_maps(cond, height, width).flatten(0, 1)
    return encoder(maps.to(encoder.weight.dtype)).flatten(2).transpose(1, 2)


@contextmanager
def added_to_output(module: nn.Module, addition: torch.Tensor) -> Iterator[None]:
    """Inside the block, `module`'s output gets `addition` (cast to the output's dtype) added:
    a forward hook, removed on exit even when the forward pass fails."""

    def add(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        return output + addition.to(output.dtype)

    handle = module.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()
