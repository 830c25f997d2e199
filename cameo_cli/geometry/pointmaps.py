"""Point maps: world-frame 3D points per pixel, from depth and cameras, with validity."""

from __future__ import annotations

import torch

from cameo_cli import cameras


def point_map_from_depth(
    depth: torch.Tensor,
    intrinsics: torch.Tensor,
    world_to_camera: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points of every pixel from z-depth.

    depth [..., H, W] (z in the camera frame), intrinsics [..., 3, 3] px for an H x W image,
    world_to_camera [..., 4, 4] (OpenCV), optional valid [..., H, W] bool.
    Returns (point_map [..., 3, H, W], valid [..., H, W]): a pixel is valid where its depth is
    finite and positive (and `valid` allows it); invalid pixels hold 0, never NaN.
    """
    ok = torch.isfinite(depth) & (depth > 0)
    if valid is not None:
        ok = ok & valid.bool()
    safe_depth = torch.where(ok, depth, torch.ones_like(depth))
    points = cameras.unproject_depth(safe_depth, intrinsics, world_to_camera)
    points = torch.where(ok.unsqueeze(-3), points, torch.zeros_like(points))
    return points, ok


def _bilinear_sources(
    size_in: int, size_out: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (first, second) and the second's weight per output index, as
    `F.interpolate(mode="bilinear", align_corners=False)` computes them along one axis."""
    scale = size_in / size_out
    source = (torch.arange(size_out, device=device, dtype=torch.float64) + 0.5) * scale - 0.5
    source = source.clamp_min(0.0)
    first = source.floor().long().clamp_max(size_in - 1)
    second = (first + 1).clamp_max(size_in - 1)
    return first, second, source - first


def resize_point_map(
    point_map: torch.Tensor, valid: torch.Tensor | None, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinearly resize a point map [..., 3, H, W] to the token grid (h, w).

    The same sampling as `F.interpolate(mode="bilinear", align_corners=False)` (the official
    code's resize): a token's point is the bilinear interpolation at its centre, from at most
    2 x 2 source pixels. Only those pixels are read, so the cost does not grow with H x W.
    A token is valid only if every source pixel with a non-zero weight is valid (so no token
    mixes in a point without geometry); non-finite points count as invalid; `valid` None means
    all finite points are valid. Returns (points [..., 3, h, w], valid [..., h, w] bool);
    invalid tokens hold 0.
    """
    height, width = point_map.shape[-2:]
    if not point_map.is_floating_point():
        point_map = point_map.float()
    rows = _bilinear_sources(height, grid[0], point_map.device)
    cols = _bilinear_sources(width, grid[1], point_map.device)
    dtype = point_map.dtype
    resized = torch.zeros(*point_map.shape[:-2], *grid, dtype=dtype, device=point_map.device)
    token_ok = torch.ones(*point_map.shape[:-3], *grid, dtype=torch.bool, device=point_map.device)
    for row_index, row_weight in ((rows[0], 1.0 - rows[2]), (rows[1], rows[2])):
        for col_index, col_weight in ((cols[0], 1.0 - cols[2]), (cols[1], cols[2])):
            weight = (row_weight[:, None] * col_weight[None, :]).to(dtype)
            source = point_map[..., row_index[:, None], col_index[None, :]]
            source_ok = torch.isfinite(source).all(dim=-3)
            if valid is not None:
                source_ok = source_ok & valid[..., row_index[:, None], col_index[None, :]].bool()
            used = weight > 0
            token_ok = token_ok & (source_ok | ~used)
            source = torch.where(source_ok.unsqueeze(-3), source, torch.zeros_like(source))
            resized = resized + weight * source
    resized = torch.where(token_ok.unsqueeze(-3), resized, torch.zeros_like(resized))
    return resized, token_ok
