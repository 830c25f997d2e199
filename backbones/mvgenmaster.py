"""MVGenMaster: the CAT3D U-Net plus geometric priors warped from the reference views.

The pixels of every reference view (views with `ref_mask` True; the others are never used
as sources, so passing all images is safe) are lifted to 3D with the sample's point map
(`cond.point_map`, world frame, masked by `cond.point_valid`; a depth map becomes a point
map through `cameo_cli.cameras.unproject_depth`) and forward-warped into every view at the
latent resolution. A z-buffer keeps the nearest point per latent cell (ties: the lowest
source index, so the result is deterministic). The priors enter as extra channels of the
zero-initialised latent-resolution condition encoder (its only channels with CAT3D's
`camera_encoder: official`, whose pixel-resolution camera encoder is shared as is):

- warped colour (3, in [-1, 1]),
- warped 3D coordinates in the frame of view 0 scaled like the Plücker raymaps
  (`cameo_cli.cameras.relative_poses`), raw and Fourier-encoded:
  `[x, sin(2^k π x), cos(2^k π x)]` for k < `num_frequencies` (3 + 6·num_frequencies),
- validity (1: a point landed in the cell).

Without a point map or reference images in `cond` the priors are zero (the model then
acts as CAT3D); training recipes for this backbone need a dataset with geometry. In
training (`self.training`) the priors of each sample are dropped with probability
`prior_drop` (0.15). `drop_camera` (CFG) zeroes only the raymap, as for CAT3D.
"""

from __future__ import annotations

import math

import torch
from diffusers import UNet2DConditionModel

from backbones import MVGENMASTER
from backbones.cat3d import Cat3D
from cameo_cli.backbone import ViewConditioning
from cameo_cli.cameras import project_points, relative_poses, resize_intrinsics, transform_points


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


class MVGenMaster(Cat3D):
    """CAT3D plus warped-reference geometric priors (see the module docstring)."""

    spec = MVGENMASTER
    option_defaults: dict[str, object] = {
        **Cat3D.option_defaults,
        "prior_drop": 0.15,
        "num_frequencies": 4,
    }

    def __init__(
        self,
        unet: UNet2DConditionModel,
        *,
        prior_drop: float,
        num_frequencies: int,
        **cat3d_options: object,
    ) -> None:
        self.prior_drop = prior_drop
        self.num_frequencies = num_frequencies
        super().__init__(unet, **cat3d_options)

    @classmethod
    def _wrap(
        cls, model: UNet2DConditionModel, variant: str, settings: dict[str, object]
    ) -> MVGenMaster:
        return cls(
            model,
            prior_drop=float(settings["prior_drop"]),
            num_frequencies=int(settings["num_frequencies"]),
            **cls.cat3d_arguments(settings),
        )

    def prior_channels(self) -> int:
        return 3 + (3 + 6 * self.num_frequencies) + 1

    def condition_channels(self) -> int:
        return super().condition_channels() + self.prior_channels()

    def condition_maps(self, latents: torch.Tensor, cond: ViewConditioning) -> torch.Tensor:
        """CAT3D's raymap + mask, then the geometric priors."""
        camera = super().condition_maps(latents, cond)
        return torch.cat([camera, self.geometric_priors(latents, cond)], dim=2)

    def geometric_priors(self, latents: torch.Tensor, cond: ViewConditioning) -> torch.Tensor:
        """[B, F, prior_channels, h, w] warped from the reference views (zero without geometry)."""
        batch, views, _, height, width = latents.shape
        if cond.point_map is None or cond.ref_images is None:
            return latents.new_zeros(batch, views, self.prior_channels(), height, width).float()
        points = cond.point_map.float()
        images = cond.ref_images.float()
        if points.shape != images.shape:
            raise ValueError(
                f"cond.point_map {tuple(points.shape)} and cond.ref_images "
                f"{tuple(images.shape)} must have the same shape"
            )
        source = cond.ref_mask.bool()[:, :, None, None].expand(-1, -1, *points.shape[-2:])
        if cond.point_valid is not None:
            source = source & cond.point_valid.bool()
        source = source & torch.isfinite(points).all(dim=2)
        colour, world, valid = forward_warp(
            images.permute(0, 1, 3, 4, 2).reshape(batch, -1, 3),
            points.nan_to_num().permute(0, 1, 3, 4, 2).reshape(batch, -1, 3),
            source.reshape(batch, -1),
            cond.intrinsics.float(),
            cond.world_to_camera.float(),
            (height, width),
            tuple(cond.image_size),
        )
        _, scale = relative_poses(cond.world_to_camera.float())
        view0 = cond.world_to_camera[:, 0].float()
        coords = transform_points(view0[:, None], world.flatten(3).transpose(-1, -2))
        coords = (
            (coords / scale[:, None, None, None]).transpose(-1, -2).unflatten(-1, (height, width))
        )
        mask = valid[:, :, None].float()
        priors = torch.cat(
            [colour, fourier_features(coords, self.num_frequencies) * mask, mask], dim=2
        )
        if self.training and self.prior_drop > 0:
            keep = torch.rand(batch, device=priors.device) >= self.prior_drop
            priors = priors * keep[:, None, None, None, None].to(priors.dtype)
        return priors
