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

import torch
from torch import nn

from cameo_cli.backbone import ViewConditioning
from cameo_cli.cameras import PIXEL_CENTRE, plucker_raymap

CAMERA_CONDITION_CHANNELS = 7  # Plücker direction (3) + moment (3) + reference mask (1)


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
