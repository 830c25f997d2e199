"""MVGenMaster: the CAT3D U-Net plus geometric priors warped from the reference views.

The pixels of every reference view (views with `ref_mask` True; the others are never used
as sources, so passing all images is safe) are lifted to 3D with the sample's point map
(`cond.point_map`, world frame, masked by `cond.point_valid`; a depth map becomes a point
map through `cameo_cli.cameras.unproject_depth`) and forward-warped into every view with a
z-buffer (nearest point per cell; ties: the lowest source index, so the result is
deterministic). As in the MVGenMaster release (`src/modules/position_encoding.py`,
`global_position_encoding_3d`; `src/modules/extra_encoder.py`, `ExConvEncoder3`):

- Depth contraction first: a reference pixel farther than `depth_mid_times` (4) x the
  median depth m of its view's valid pixels is pulled along its ray to z' = 2m - m^2 / z
  (< 2m), for the colour and the position prior alike (`contract_depth`).
- Colour prior at PIXEL resolution: the warped colour (3, in [-1, 1]) and its validity (1),
  through a strided conv encoder (`OfficialCameraEncoder`'s stack on 4 channels, zero output
  conv) to `conv_in`'s width at the latent resolution.
- Position prior at the latent resolution: the warped 3D points in the frame of view 0
  (scaled like the Plücker raymaps, `cameo_cli.cameras.relative_poses`), each point min-max
  normalised over its own x, y, z to [0, 1] (`normalise_points`, the release's min/max over
  the channel axis), Fourier-encoded `[x, sin(2^k π x), cos(2^k π x)]` for k <
  `num_frequencies` (3 + 6·num_frequencies) and masked, plus its validity (1). It enters
  the zero-initialised latent-resolution condition encoder (with CAT3D's raymap + mask when
  `camera_encoder: conv`). In training (`self.training`) element-wise dropout with
  probability `prior_drop` (0.15) hits these maps only (inverted scaling), drawn from
  `cond.generator` (the trainer's, so a resumed run draws the same; else torch's global one).

Without a point map or reference images in `cond` the priors are zero (the model then acts
as CAT3D; the sampling pipeline warns). `drop_camera` (CFG) zeroes only the raymap.
"""

from __future__ import annotations

import math

import torch
from diffusers import UNet2DConditionModel

from cameo.backbones import MVGENMASTER
from cameo.backbones.cat3d import Cat3D, OfficialCameraEncoder
from cameo_cli.cameras import (
    camera_centers,
    point_map_depth,
    project_points,
    relative_poses,
    resize_intrinsics,
    transform_points,
)
from cameo_cli.conditioning import ViewConditioning


def fourier_features(coords: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """[..., 3, h, w] -> [..., 3 + 6·L, h, w]: the coordinates, then sin and cos of 2^k π x."""
    frequencies = math.pi * 2.0 ** torch.arange(
        num_frequencies, dtype=coords.dtype, device=coords.device
    )
    angles = (coords.unsqueeze(-4) * frequencies[:, None, None, None]).flatten(-4, -3)
    return torch.cat([coords, angles.sin(), angles.cos()], dim=-3)


def forward_warp(
    colors: torch.Tensor,
    points: torch.Tensor,
    source_mask: torch.Tensor,
    intrinsics: torch.Tensor,
    world_to_camera: torch.Tensor,
    grid: tuple[int, int],
    image_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Splat source points into every view with a z-buffer at `grid` resolution.

    colors [B, N, 3], points [B, N, 3] (world), source_mask [B, N] bool, intrinsics
    [B, F, 3, 3] for images of `image_size`, world_to_camera [B, F, 4, 4].
    Returns (colour [B, F, 3, h, w], world points [B, F, 3, h, w], valid [B, F, h, w]).
    """
    batch, count, _ = points.shape
    views = world_to_camera.shape[1]
    height, width = grid
    K = resize_intrinsics(intrinsics, image_size, grid)
    pixels, depth = project_points(points[:, None], K, world_to_camera)  # [B, F, N, 2], [B, F, N]
    col, row = pixels[..., 0].floor(), pixels[..., 1].floor()
    hit = (
        source_mask[:, None]
        & (depth > 1e-6)
        & (col >= 0)
        & (col < width)
        & (row >= 0)
        & (row < height)
        & torch.isfinite(pixels).all(dim=-1)
    )
    cells = batch * views * height * width
    view_offset = torch.arange(batch * views, device=points.device).view(batch, views, 1)
    cell = view_offset * (height * width) + (row.clamp(0, height - 1) * width).long()
    cell = cell + col.clamp(0, width - 1).long()
    cell, depth_hit = cell[hit], depth[hit]
    source = torch.arange(count, device=points.device).expand(batch, views, count)
    source = source[hit]

    nearest = torch.full((cells,), math.inf, dtype=depth.dtype, device=depth.device)
    nearest = nearest.scatter_reduce(0, cell, depth_hit, reduce="amin")
    front = depth_hit <= nearest[cell]
    winner = torch.full((cells,), count, dtype=torch.long, device=depth.device)
    winner = winner.scatter_reduce(0, cell[front], source[front], reduce="amin")
    valid = winner < count
    pick = winner.clamp(max=count - 1).view(batch, views * height * width)
    colour = torch.gather(colors, 1, pick[..., None].expand(-1, -1, 3))
    world = torch.gather(points, 1, pick[..., None].expand(-1, -1, 3))

    def to_maps(values: torch.Tensor) -> torch.Tensor:
        values = values * valid.view(batch, -1, 1).to(values.dtype)
        return values.view(batch, views, height, width, 3).permute(0, 1, 4, 2, 3)

    return to_maps(colour), to_maps(world), valid.view(batch, views, height, width)


def contract_depth(depth: torch.Tensor, valid: torch.Tensor, times: float) -> torch.Tensor:
    """The release's depth contraction: z [..., H, W] beyond m = `times` x the median of the
    view's `valid` depths becomes 2m - m^2 / z (continuous at m, below 2m); the rest is kept."""
    masked = torch.where(valid, depth, torch.full_like(depth, math.nan))
    limit = masked.flatten(-2).nanmedian(dim=-1).values[..., None, None] * times
    far = valid & (depth > limit)
    contracted = 2 * limit - limit.square() / depth.clamp_min(1e-6)
    return torch.where(far, contracted, depth)


def normalise_points(points: torch.Tensor) -> torch.Tensor:
    """The release's normalisation of a position prior [..., 3, h, w]: each point's x, y, z
    min-max scaled over its own three coordinates, (c - min) / (max - min + 1e-6), in [0, 1]."""
    low = points.amin(dim=-3, keepdim=True)
    high = points.amax(dim=-3, keepdim=True)
    return (points - low) / (high - low + 1e-6)


class MVGenMaster(Cat3D):
    """CAT3D plus warped-reference geometric priors (see the module docstring)."""

    spec = MVGENMASTER
    uses_priors = True
    COLOUR_CHANNELS = 4  # warped colour + validity

    def __init__(
        self,
        unet: UNet2DConditionModel,
        *,
        prior_drop: float,
        num_frequencies: int,
        depth_mid_times: float,
        **cat3d_options: object,
    ) -> None:
        self.prior_drop = prior_drop
        self.num_frequencies = num_frequencies
        self.depth_mid_times = depth_mid_times
        super().__init__(unet, **cat3d_options)
        self.prior_encoder = OfficialCameraEncoder(
            unet.conv_in.out_channels, self.downsample, in_channels=self.COLOUR_CHANNELS
        )

    def position_channels(self) -> int:
        return 3 + 6 * self.num_frequencies + 1

    def condition_channels(self) -> int:
        return super().condition_channels() + self.position_channels()

    def condition_maps(self, latents: torch.Tensor, cond: ViewConditioning) -> torch.Tensor:
        """CAT3D's raymap + mask (with `camera_encoder: conv`), then the position prior."""
        camera = super().condition_maps(latents, cond)
        return torch.cat([camera, self.position_prior(latents, cond)], dim=2)

    def conv_in_addition(self, latents: torch.Tensor, cond: ViewConditioning) -> torch.Tensor:
        """CAT3D's encoders plus the encoded pixel-resolution colour prior."""
        colour = self.colour_prior(cond).flatten(0, 1)
        encoded = self.prior_encoder(colour.to(self.prior_encoder.out.weight.dtype))
        return super().conv_in_addition(latents, cond) + encoded

    def reference_points(self, cond: ViewConditioning) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(world points [B, F, 3, H, W] with contracted depth, source mask [B, F, H, W]) of
        the reference pixels with geometry; None without a point map or reference images."""
        if cond.point_map is None or cond.ref_images is None:
            return None
        points = cond.point_map.float()
        if points.shape != cond.ref_images.shape:
            raise ValueError(
                f"cond.point_map {tuple(points.shape)} and cond.ref_images "
                f"{tuple(cond.ref_images.shape)} must have the same shape"
            )
        w2c = cond.world_to_camera.float()
        source = cond.ref_mask.bool()[:, :, None, None].expand(-1, -1, *points.shape[-2:])
        if cond.point_valid is not None:
            source = source & cond.point_valid.bool()
        points = points.nan_to_num()
        depth = point_map_depth(points, w2c)
        source = source & torch.isfinite(cond.point_map).all(dim=2) & (depth > 1e-6)
        ratio = contract_depth(depth, source, self.depth_mid_times) / depth.clamp_min(1e-6)
        centres = camera_centers(w2c)[..., None, None]
        points = centres + (points - centres) * torch.where(source, ratio, 1.0)[:, :, None]
        return points, source

    def _warp(
        self, cond: ViewConditioning, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        reference = self.reference_points(cond)
        if reference is None:
            return None
        points, source = reference
        batch = points.shape[0]
        return forward_warp(
            cond.ref_images.float().permute(0, 1, 3, 4, 2).reshape(batch, -1, 3),
            points.permute(0, 1, 3, 4, 2).reshape(batch, -1, 3),
            source.reshape(batch, -1),
            cond.intrinsics.float(),
            cond.world_to_camera.float(),
            grid,
            tuple(cond.image_size),
        )

    def colour_prior(self, cond: ViewConditioning) -> torch.Tensor:
        """[B, F, 4, H, W]: the references' colour warped at pixel resolution, then validity
        (zero without geometry)."""
        size = tuple(cond.image_size)
        warped = self._warp(cond, size)
        if warped is None:
            return cond.intrinsics.new_zeros(*cond.ref_mask.shape, self.COLOUR_CHANNELS, *size)
        colour, _, valid = warped
        return torch.cat([colour, valid[:, :, None].float()], dim=2)

    def position_prior(self, latents: torch.Tensor, cond: ViewConditioning) -> torch.Tensor:
        """[B, F, position_channels, h, w]: normalised, Fourier-encoded warped points, then
        validity (zero without geometry); element-wise dropout in training."""
        batch, views, _, height, width = latents.shape
        warped = self._warp(cond, (height, width))
        if warped is None:
            return latents.new_zeros(batch, views, self.position_channels(), height, width).float()
        _, world, valid = warped
        _, scale = relative_poses(cond.world_to_camera.float())
        view0 = cond.world_to_camera[:, 0].float()
        coords = transform_points(view0[:, None], world.flatten(3).transpose(-1, -2))
        coords = (coords / scale[:, None, None, None]).transpose(-1, -2)
        coords = normalise_points(coords.unflatten(-1, (height, width)))
        mask = valid[:, :, None].float()
        priors = torch.cat([fourier_features(coords, self.num_frequencies) * mask, mask], dim=2)
        if self.training and self.prior_drop > 0:
            priors = self._dropout(priors, cond.generator)
        return priors

    def _dropout(self, maps: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Element-wise dropout with probability `prior_drop`, kept values scaled by 1 / (1 - p)."""
        if self.prior_drop >= 1:
            return torch.zeros_like(maps)
        draw = torch.rand(maps.shape, generator=generator, device=maps.device)
        return maps * (draw >= self.prior_drop).to(maps.dtype) / (1 - self.prior_drop)
