"""Camera conventions: the one place where axes, poses and intrinsics are converted.

Conventions used everywhere in cameo (every function here keeps to them):

- **Axes**: OpenCV (x right, y down, z forward). OpenGL/Blender cameras (x right, y up,
  z backward) differ by flipping the camera's y and z axes.
- **Poses**: world-to-camera 4x4 (`w2c`), ``x_cam = R @ x_world + t``. Camera-to-world
  (`c2w`) is its rigid inverse; the camera centre is ``-Rᵀ t``.
- **Intrinsics**: pixel `K` (3x3) for a stated image size. Continuous pixel coordinates
  span ``[0, W] x [0, H]``: pixel (row r, col c) covers ``[c, c+1] x [r, r+1]`` and its
  centre is ``(c + 0.5, r + 0.5)``. With this convention resizing scales `K` exactly and
  normalised intrinsics (RealEstate10K: fx, cx divided by W; fy, cy by H) are `K` divided
  by the image size.
- **Depth**: z-depth in the camera frame (not the distance along the ray).

All functions are batched over leading dimensions, keep the input's dtype and device
(float64 works), never copy to the CPU, and run outside autocast (a bf16 matmul would move a
512-pixel projection by pixels), so they give the same result inside a mixed-precision forward.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TypeVar

import torch

_Function = TypeVar("_Function", bound=Callable)


def _full_precision(function: _Function) -> _Function:
    """Run `function` with autocast disabled on the device of its first tensor argument."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tensor = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        device_type = tensor.device.type if tensor is not None else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


_FLIP_YZ = (1.0, -1.0, -1.0, 1.0)


def _flip_yz(like: torch.Tensor) -> torch.Tensor:
    return torch.diag(torch.tensor(_FLIP_YZ, dtype=like.dtype, device=like.device))


# -- axes and poses ---------------------------------------------------------------------------


@_full_precision
def w2c_opencv_to_opengl(w2c: torch.Tensor) -> torch.Tensor:
    """World-to-camera [..., 4, 4]: OpenCV camera axes -> OpenGL camera axes (world unchanged)."""
    return _flip_yz(w2c) @ w2c


@_full_precision
def w2c_opengl_to_opencv(w2c: torch.Tensor) -> torch.Tensor:
    """World-to-camera [..., 4, 4]: OpenGL camera axes -> OpenCV camera axes (self-inverse)."""
    return _flip_yz(w2c) @ w2c


@_full_precision
def c2w_opencv_to_opengl(c2w: torch.Tensor) -> torch.Tensor:
    """Camera-to-world [..., 4, 4]: OpenCV camera axes -> OpenGL camera axes."""
    return c2w @ _flip_yz(c2w)


@_full_precision
def c2w_opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """Camera-to-world [..., 4, 4]: OpenGL camera axes -> OpenCV camera axes."""
    return c2w @ _flip_yz(c2w)


@_full_precision
def rigid_inverse(pose: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid 4x4 transforms [..., 4, 4] as ``[Rᵀ, -Rᵀ t]`` (exact, no solve)."""
    rotation = pose[..., :3, :3]
    translation = pose[..., :3, 3:]
    inverse = torch.zeros_like(pose)
    inverse[..., :3, :3] = rotation.transpose(-1, -2)
    inverse[..., :3, 3:] = -rotation.transpose(-1, -2) @ translation
    inverse[..., 3, 3] = 1.0
    return inverse


def w2c_to_c2w(w2c: torch.Tensor) -> torch.Tensor:
    """World-to-camera [..., 4, 4] -> camera-to-world [..., 4, 4]."""
    return rigid_inverse(w2c)


def c2w_to_w2c(c2w: torch.Tensor) -> torch.Tensor:
    """Camera-to-world [..., 4, 4] -> world-to-camera [..., 4, 4]."""
    return rigid_inverse(c2w)


def pose_from_3x4(matrix: torch.Tensor) -> torch.Tensor:
    """Row-major 3x4 ``[R|t]`` [..., 3, 4] (or 12 values [..., 12]) -> homogeneous [..., 4, 4]."""
    if matrix.shape[-1] == 12:
        matrix = matrix.reshape(*matrix.shape[:-1], 3, 4)
    bottom = torch.zeros(*matrix.shape[:-2], 1, 4, dtype=matrix.dtype, device=matrix.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([matrix, bottom], dim=-2)


@_full_precision
def camera_centers(w2c: torch.Tensor) -> torch.Tensor:
    """Camera centres in world coordinates [..., 3] from world-to-camera [..., 4, 4]: -Rᵀ t."""
    rotation = w2c[..., :3, :3]
    return -(rotation.transpose(-1, -2) @ w2c[..., :3, 3:]).squeeze(-1)


@_full_precision
def relative_rotation_angle(w2c_a: torch.Tensor, w2c_b: torch.Tensor) -> torch.Tensor:
    """Angle in degrees [...] of the rotation between two cameras (robust near 0° and 180°)."""
    relative = w2c_a[..., :3, :3] @ w2c_b[..., :3, :3].transpose(-1, -2)
    cosine = (relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    axis = torch.stack(
        [
            relative[..., 2, 1] - relative[..., 1, 2],
            relative[..., 0, 2] - relative[..., 2, 0],
            relative[..., 1, 0] - relative[..., 0, 1],
        ],
        dim=-1,
    )
    sine = torch.linalg.vector_norm(axis, dim=-1) / 2.0
    return torch.rad2deg(torch.atan2(sine, cosine))


@_full_precision
def quaternion_to_rotation(quaternion: torch.Tensor) -> torch.Tensor:
    """Unit quaternions [..., 4] in (w, x, y, z) order -> rotation matrices [..., 3, 3]
    (active: R @ v rotates v by the quaternion; q and -q give the same R)."""
    w, x, y, z = quaternion.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


@_full_precision
def pose_from_quaternion(quaternion: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """The rigid 4x4 [..., 4, 4] ``translate(t) @ R(q)`` (x -> R x + t) from unit quaternions
    [..., 4] (w, x, y, z) and translations [..., 3]."""
    rotation = quaternion_to_rotation(quaternion)
    return pose_from_3x4(torch.cat([rotation, translation[..., :, None]], dim=-1))


# -- intrinsics -------------------------------------------------------------------------------


def intrinsics_matrix(
    fx: torch.Tensor, fy: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor
) -> torch.Tensor:
    """Build K [..., 3, 3] from focal lengths and principal point (broadcast together)."""
    fx, fy, cx, cy = torch.broadcast_tensors(fx, fy, cx, cy)
    K = torch.zeros(*fx.shape, 3, 3, dtype=fx.dtype, device=fx.device)
    K[..., 0, 0] = fx
    K[..., 1, 1] = fy
    K[..., 0, 2] = cx
    K[..., 1, 2] = cy
    K[..., 2, 2] = 1.0
    return K


def _axis_scale(K: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    scale = torch.tensor([sx, sy, 1.0], dtype=K.dtype, device=K.device)
    return K * scale[:, None]


def normalized_to_pixel_intrinsics(
    K_normalized: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Normalised K (x row divided by W, y row by H) -> pixel K for an image of H x W."""
    return _axis_scale(K_normalized, float(width), float(height))


def pixel_to_normalized_intrinsics(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel K for an image of H x W -> normalised K (x row divided by W, y row by H)."""
    return _axis_scale(K, 1.0 / width, 1.0 / height)


def resize_intrinsics(
    K: torch.Tensor, old_size: tuple[int, int], new_size: tuple[int, int]
) -> torch.Tensor:
    """Pixel K after resizing the image from (H, W) `old_size` to (H', W') `new_size`."""
    (old_h, old_w), (new_h, new_w) = old_size, new_size
    return _axis_scale(K, new_w / old_w, new_h / old_h)


def crop_intrinsics(K: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Pixel K after cropping the image so that pixel (top, left) becomes (0, 0)."""
    shift = torch.tensor([float(left), float(top), 0.0], dtype=K.dtype, device=K.device)
    return K - shift[:, None] * K[..., 2:3, :]


def resize_center_crop_box(size: tuple[int, int], target: int) -> tuple[int, int, int, int]:
    """(resized_h, resized_w, top, left): resize the shorter side of (H, W) to `target`, then
    centre-crop a `target` x `target` square at (top, left) of the resized image."""
    height, width = size
    scale = target / min(height, width)
    resized_h = max(target, round(height * scale))
    resized_w = max(target, round(width * scale))
    return resized_h, resized_w, (resized_h - target) // 2, (resized_w - target) // 2


def resize_center_crop_intrinsics(
    K: torch.Tensor, size: tuple[int, int], target: int
) -> torch.Tensor:
    """Pixel K after `resize_center_crop_box(size, target)` (an image of target x target)."""
    resized_h, resized_w, top, left = resize_center_crop_box(size, target)
    return crop_intrinsics(resize_intrinsics(K, size, (resized_h, resized_w)), top, left)


# -- projection -------------------------------------------------------------------------------


@_full_precision
def transform_points(transform: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply 4x4 transforms [..., 4, 4] to points [..., N, 3]."""
    return points @ transform[..., :3, :3].transpose(-1, -2) + transform[..., None, :3, 3]


@_full_precision
def project_points(
    points: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points [..., N, 3] -> (pixel coordinates [..., N, 2], z-depth [..., N]) by K [R|t].

    Points at or behind the camera get non-finite or meaningless pixels: check depth > 0.
    """
    camera = transform_points(w2c, points)
    homogeneous = camera @ K.transpose(-1, -2)
    depth = homogeneous[..., 2]
    return homogeneous[..., :2] / depth[..., None], camera[..., 2]


PIXEL_CENTRE = (0.5, 0.5)  # (u, v) offset of a pixel's centre from its (col, row) index
# The official CAMEO raymap's grid (`src/modules/camera.py`: x - 0.5, y + 0.5): centres
# shifted one pixel left. Only `camera_encoder: official` uses it.
OFFICIAL_PIXEL_OFFSET = (-0.5, 0.5)


def pixel_centers(
    height: int,
    width: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    offset: tuple[float, float] = PIXEL_CENTRE,
) -> torch.Tensor:
    """Homogeneous pixel coordinates [H, W, 3] of an H x W image: (c + du, r + dv, 1) for
    `offset` (du, dv); the default is the pixel centres (c + 0.5, r + 0.5, 1)."""
    rows = torch.arange(height, dtype=dtype, device=device) + offset[1]
    cols = torch.arange(width, dtype=dtype, device=device) + offset[0]
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([u, v, torch.ones_like(u)], dim=-1)


@_full_precision
def camera_rays(
    K: torch.Tensor,
    height: int,
    width: int,
    image_size: tuple[int, int] | None = None,
    *,
    pixel_offset: tuple[float, float] = PIXEL_CENTRE,
) -> torch.Tensor:
    """Camera-frame rays K⁻¹ (u, v, 1) [..., H, W, 3] (z = 1) through the pixel centres (or
    `pixel_centers`' `pixel_offset`) of an H x W grid laid over an image of `image_size` (the
    frame of `K`; default (H, W))."""
    if image_size is not None and tuple(image_size) != (height, width):
        K = resize_intrinsics(K, image_size, (height, width))
    pixels = pixel_centers(height, width, dtype=K.dtype, device=K.device, offset=pixel_offset)
    K_inv = torch.linalg.inv(K)
    return torch.einsum("...ij,hwj->...hwi", K_inv, pixels)


@_full_precision
def unproject_depth(depth: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """z-depth [..., H, W] + K [..., 3, 3] + w2c [..., 4, 4] -> world points [..., 3, H, W]."""
    height, width = depth.shape[-2:]
    camera = camera_rays(K, height, width) * depth[..., None]
    c2w = w2c_to_c2w(w2c)
    world = torch.einsum("...ij,...hwj->...ihw", c2w[..., :3, :3], camera)
    return world + c2w[..., :3, 3, None, None]


def point_map_depth(points: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """World points [..., 3, H, W] + w2c [..., 4, 4] -> their z-depth [..., H, W] in that
    camera (the inverse of `unproject_depth` for the camera that saw them)."""
    rotation_z, translation_z = w2c[..., 2, :3], w2c[..., 2, 3]
    return torch.einsum("...j,...jhw->...hw", rotation_z, points) + translation_z[..., None, None]


# -- Plücker raymaps --------------------------------------------------------------------------


@_full_precision
def relative_poses(
    w2c: torch.Tensor, reference_view: int = 0, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Express cameras [..., F, 4, 4] relative to one view, translations normalised.

    Returns (w2c_relative [..., F, 4, 4], scale [...]). The reference camera becomes the
    identity; the new world is that camera's frame divided by `scale` = the largest distance
    from the reference camera centre to any camera centre of the sample (1 when all centres
    coincide, i.e. that distance is below `eps`), so every camera centre lies in the unit ball.
    """
    reference_c2w = w2c_to_c2w(w2c[..., reference_view : reference_view + 1, :, :])
    relative = w2c @ reference_c2w
    distances = torch.linalg.vector_norm(camera_centers(relative), dim=-1)
    scale = distances.amax(dim=-1)
    scale = torch.where(scale > eps, scale, torch.ones_like(scale))
    relative = relative.clone()
    relative[..., :3, 3] = relative[..., :3, 3] / scale[..., None, None]
    return relative, scale


@_full_precision
def plucker_raymap(
    K: torch.Tensor,
    w2c: torch.Tensor,
    height: int,
    width: int,
    reference_view: int = 0,
    *,
    image_size: tuple[int, int] | None = None,
    pixel_offset: tuple[float, float] = PIXEL_CENTRE,
) -> torch.Tensor:
    """Plücker raymaps [..., F, 6, height, width]: unit direction d, then moment o x d.

    - `K` [..., F, 3, 3] (or [..., 3, 3], broadcast over views): pixel intrinsics of an image
      of `image_size` (H, W); default (height, width).
    - `w2c` [..., F, 4, 4] OpenCV, made relative to `reference_view` with translations
      normalised as in `relative_poses` (the reference camera is the identity, every camera
      centre within distance 1 of it).
    - The rays go through the pixel centres of a height x width grid laid over the image
      (token/latent resolution): grid cell (r, c) is image point ((c + 0.5) W / width,
      (r + 0.5) H / height); `pixel_offset` replaces the 0.5s (`pixel_centers`). Directions
      are in the relative world frame, unit length.
    """
    relative, _ = relative_poses(w2c, reference_view)
    if K.dim() == w2c.dim() - 1:
        K = K.unsqueeze(-3)
    K = K.expand(*relative.shape[:-2], 3, 3)
    rays = camera_rays(K, height, width, image_size, pixel_offset=pixel_offset)  # [..., F, h, w, 3]
    c2w = w2c_to_c2w(relative)
    directions = torch.einsum("...ij,...hwj->...hwi", c2w[..., :3, :3], rays)
    directions = directions / torch.linalg.vector_norm(directions, dim=-1, keepdim=True)
    origins = c2w[..., None, None, :3, 3].expand_as(directions)
    moments = torch.linalg.cross(origins, directions, dim=-1)
    return torch.cat([directions, moments], dim=-1).movedim(-1, -3)


def fov_to_focal(fov_degrees: float, size: int) -> float:
    """Focal length in pixels for a field of view (degrees) across `size` pixels."""
    return size / (2.0 * math.tan(math.radians(fov_degrees) / 2.0))
