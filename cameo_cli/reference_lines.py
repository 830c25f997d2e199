"""Reference lines for novel-view metrics: what a target view scores without any model.

For the target views of one sample, from its reference views (images `[F, 3, H, W]` in
[0, 1], pixel `K`, OpenCV world-to-camera, point maps as `MultiViewDataset` items give them):

- `flat`: every pixel the references' mean colour (per channel, over all reference pixels);
- `copy`: the reference whose camera centre is nearest to the target's, as it is;
- `reproject` (only with point maps): each target pixel's world point (the target's own
  point map) is projected into every reference; a reference sees it when it lands inside the
  image in front of the camera and the reference's z-depth at the nearest pixel agrees within
  `DEPTH_TOLERANCE` (|z_ref - z| <= 3 % of the projected z). The pixel takes the colour of
  that nearest pixel in the nearest reference (camera-centre distance) that sees it, the
  references' mean colour where none does (or where the target has no depth); `seen` is the
  share of target pixels that some reference sees.

A model earns its keep above `copy`; `reproject` is what exact geometry gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cameo_cli import cameras

DEPTH_TOLERANCE = 0.03
LINES = ("flat", "copy", "reproject")


@dataclass
class ReferenceLines:
    """The lines' images `[T, 3, H, W]` for the T target views (in view order); `reproject`
    and `seen` [T] (share of pixels seen) are None without point maps."""

    flat: torch.Tensor
    copy: torch.Tensor
    reproject: torch.Tensor | None = None
    seen: torch.Tensor | None = None

    def images(self) -> dict[str, torch.Tensor]:
        """Line name -> images, for the lines this sample has."""
        lines = {"flat": self.flat, "copy": self.copy, "reproject": self.reproject}
        return {name: image for name, image in lines.items() if image is not None}


def reference_lines(
    images: torch.Tensor,
    intrinsics: torch.Tensor,
    world_to_camera: torch.Tensor,
    ref_mask: torch.Tensor,
    point_map: torch.Tensor | None = None,
    point_valid: torch.Tensor | None = None,
) -> ReferenceLines:
    """The reference lines of the target views (`~ref_mask`) of one sample: images
    [F, 3, H, W] in [0, 1], intrinsics [F, 3, 3] px, world_to_camera [F, 4, 4], ref_mask [F]
    bool, optionally point_map [F, 3, H, W] (world) with point_valid [F, H, W]."""
    ref_mask = ref_mask.bool()
    references = images[ref_mask].float()
    targets = int((~ref_mask).sum())
    mean = references.mean(dim=(0, 2, 3))
    flat = mean[None, :, None, None].expand(targets, -1, *images.shape[-2:]).clone()
    centres = cameras.camera_centers(world_to_camera.double())
    distance = torch.cdist(centres[~ref_mask], centres[ref_mask])  # [T, R]
    nearest_first = distance.argsort(dim=1, stable=True)
    copy = references[nearest_first[:, 0]]
    if point_map is None:
        return ReferenceLines(flat, copy)
    if point_valid is None:
        point_valid = torch.isfinite(point_map).all(dim=-3)
    reproject, seen = _reproject(
        references,
        intrinsics[ref_mask].double(),
        world_to_camera[ref_mask].double(),
        point_map.double(),
        point_valid.bool(),
        ref_mask,
        nearest_first,
        mean,
    )
    return ReferenceLines(flat, copy, reproject, seen)


def _reproject(
    references: torch.Tensor,
    ref_K: torch.Tensor,
    ref_w2c: torch.Tensor,
    point_map: torch.Tensor,
    point_valid: torch.Tensor,
    ref_mask: torch.Tensor,
    nearest_first: torch.Tensor,
    mean: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reproject [T, 3, H, W], seen [T]) as the module docstring defines them."""
    height, width = references.shape[-2:]
    refs, pixels = references.shape[0], height * width
    target_points = point_map[~ref_mask].flatten(2).transpose(1, 2)  # [T, HW, 3]
    target_ok = point_valid[~ref_mask].flatten(1)  # [T, HW]
    targets = target_points.shape[0]
    # every target pixel in every reference: [T, R, HW]
    uv, depth = cameras.project_points(target_points[:, None], ref_K[None], ref_w2c[None])
    col, row = uv[..., 0].floor(), uv[..., 1].floor()
    inside = (depth > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    flat_index = torch.where(inside, row * width + col, torch.zeros_like(col)).long()
    ref_points = point_map[ref_mask].flatten(2).transpose(1, 2)  # [R, HW, 3]
    ref_depth = cameras.transform_points(ref_w2c, ref_points)[..., 2]  # [R, HW]
    ref_ok = point_valid[ref_mask].flatten(1)
    shape = (targets, refs, pixels)
    there = ref_depth[None].expand(shape).gather(2, flat_index)
    there_ok = ref_ok[None].expand(shape).gather(2, flat_index)
    agrees = (there - depth).abs() <= DEPTH_TOLERANCE * depth
    sees = inside & there_ok & agrees & target_ok[:, None]
    # the nearest reference that sees each pixel: the first in nearest-first order
    sees_in_order = sees.gather(1, nearest_first[:, :, None].expand(shape))
    first = sees_in_order.to(torch.uint8).argmax(dim=1)  # [T, HW]
    chosen = nearest_first.gather(1, first)  # [T, HW] reference index
    source = flat_index.gather(1, chosen[:, None]).squeeze(1)  # [T, HW] pixel in it
    colours = references.flatten(2).transpose(1, 2)[chosen, source]  # [T, HW, 3]
    seen = sees.any(dim=1)
    colours = torch.where(seen[..., None], colours, mean.to(colours.dtype))
    image = colours.transpose(1, 2).reshape(targets, 3, height, width)
    return image, seen.float().mean(dim=1)
