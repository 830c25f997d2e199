"""Target trajectories made from the reference cameras: an orbit, or an interpolation.

Cameras are OpenCV world-to-camera 4x4 with pixel intrinsics (see `cameo_cli.cameras`).
Rotations are interpolated with quaternion slerp, centres and intrinsics linearly. All
math in float64.
"""

from __future__ import annotations

import math

import torch

from cameo_cli import cameras
from cameo_cli.errors import CameoError

# Distance of the look-at point along the first camera's axis when the axes do not meet
# (one reference, or parallel axes), in units of the references' spread (or 1 if none).
FALLBACK_DEPTH = 2.0


def rotation_to_quaternion(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions (w, x, y, z) [..., 4], w >= 0."""
    m = rotation
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # Four candidate formulas; take the one with the largest (most stable) denominator.
    candidates = torch.stack(
        [
            torch.stack(
                [
                    1 + trace,
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                    m[..., 0, 1] + m[..., 1, 0],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 0, 1] + m[..., 1, 0],
                    1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                    m[..., 1, 2] + m[..., 2, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 1, 2] + m[..., 2, 1],
                    1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
                ],
                -1,
            ),
        ],
        -2,
    )  # [..., 4, 4]: row k is 4 * q_k * q
    diagonal = torch.stack([candidates[..., k, k] for k in range(4)], -1)  # 4 * q_k^2 for each k
    best = diagonal.argmax(-1, keepdim=True)
    row = torch.gather(candidates, -2, best[..., None].expand(*best.shape[:-1], 1, 4))[..., 0, :]
    quaternion = row / torch.linalg.vector_norm(row, dim=-1, keepdim=True)
    return torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)


def quaternion_to_rotation(quaternion: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) [..., 4] -> rotation matrices [..., 3, 3]."""
    w, x, y, z = quaternion.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def slerp(q0: torch.Tensor, q1: torch.Tensor, fraction: float) -> torch.Tensor:
    """Spherical interpolation of unit quaternions [4] along the shorter arc."""
    dot = torch.dot(q0, q1)
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 1 - 1e-9:  # nearly equal: linear is exact to rounding
        mixed = q0 + fraction * (q1 - q0)
        return mixed / torch.linalg.vector_norm(mixed)
    angle = torch.arccos(dot.clamp(max=1.0))
    return (torch.sin((1 - fraction) * angle) * q0 + torch.sin(fraction * angle) * q1) / torch.sin(
        angle
    )


def _pose(rotation_c2w: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    c2w = torch.eye(4, dtype=rotation_c2w.dtype)
    c2w[:3, :3] = rotation_c2w
    c2w[:3, 3] = center
    return cameras.c2w_to_w2c(c2w)


def look_at_center(world_to_camera: torch.Tensor) -> torch.Tensor:
    """The point [3] nearest (least squares) to every camera's optical axis.

    Falls back to a point on the first camera's axis (`FALLBACK_DEPTH` times the spread of
    the centres, or 1) when the axes do not meet in front of the cameras.
    """
    w2c = world_to_camera.to(torch.float64)
    centers = cameras.camera_centers(w2c)
    axes = w2c[:, 2, :3]  # the camera z axis (viewing direction) in world coordinates
    spread = torch.linalg.vector_norm(centers - centers.mean(0), dim=-1).max().item()
    fallback = centers[0] + axes[0] * FALLBACK_DEPTH * (spread if spread > 1e-9 else 1.0)
    if len(w2c) < 2:
        return fallback
    projectors = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]
    system = projectors.sum(0)
    if torch.linalg.cond(system) > 1e6:
        return fallback
    point = torch.linalg.solve(system, (projectors @ centers[:, :, None]).sum(0))[:, 0]
    depths = ((point - centers) * axes).sum(-1)
    return point if bool((depths > 0).all()) else fallback


def up_axis(world_to_camera: torch.Tensor) -> torch.Tensor:
    """The orbit axis [3]: the normal of the plane through 3+ camera centres when they span
    one, else the mean camera "up" (OpenCV -y); oriented to agree with that mean up."""
    w2c = world_to_camera.to(torch.float64)
    mean_up = -w2c[:, 1, :3].mean(0)
    if torch.linalg.vector_norm(mean_up) < 1e-9:
        mean_up = -w2c[0, 1, :3]
    centers = cameras.camera_centers(w2c)
    if len(centers) >= 3:
        _, singular, vh = torch.linalg.svd(centers - centers.mean(0))
        if singular[1] > 1e-6 * singular[0] and singular[2] < 0.1 * singular[1]:
            normal = vh[2]
            return normal if torch.dot(normal, mean_up) >= 0 else -normal
    return mean_up / torch.linalg.vector_norm(mean_up)


def _rotation_about(axis: torch.Tensor, angle: float) -> torch.Tensor:
    axis = axis / torch.linalg.vector_norm(axis)
    cross = torch.tensor(
        [[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]],
        dtype=torch.float64,
    )
    identity = torch.eye(3, dtype=torch.float64)
    return identity + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def orbit(
    intrinsics: torch.Tensor, world_to_camera: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` cameras on a full circle around the references' look-at centre.

    The first reference camera is turned about `up_axis` through `look_at_center`, by
    360°·k/count for k = 0 .. count - 1; intrinsics are the first reference's.
    Returns (K [count, 3, 3], w2c [count, 4, 4]).
    """
    if count < 1:
        raise CameoError(f"--orbit needs at least 1 camera, got {count}")
    w2c = world_to_camera.to(torch.float64)
    center, up = look_at_center(w2c), up_axis(w2c)
    c2w = cameras.w2c_to_c2w(w2c[0])
    poses = []
    for k in range(count):
        turn = _rotation_about(up, 2 * math.pi * k / count)
        poses.append(_pose(turn @ c2w[:3, :3], turn @ (c2w[:3, 3] - center) + center))
    K = intrinsics[0].to(torch.float64).expand(count, 3, 3).clone()
    return K, torch.stack(poses)


def interpolate(
    intrinsics: torch.Tensor, world_to_camera: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` cameras evenly spaced along the path through the references, in their order,
    strictly between the first and the last (rotations slerped, centres and K lerped)."""
    if count < 1:
        raise CameoError(f"--interpolate needs at least 1 camera, got {count}")
    if len(world_to_camera) < 2:
        raise CameoError("--interpolate needs at least 2 reference views to move between")
    w2c = world_to_camera.to(torch.float64)
    K = intrinsics.to(torch.float64)
    c2w = cameras.w2c_to_c2w(w2c)
    quaternions = rotation_to_quaternion(c2w[:, :3, :3])
    segments = len(w2c) - 1
    out_K, out_pose = [], []
    for k in range(count):
        position = (k + 1) / (count + 1) * segments
        index = min(int(position), segments - 1)
        fraction = position - index
        rotation = quaternion_to_rotation(
            slerp(quaternions[index], quaternions[index + 1], fraction)
        )
        center = torch.lerp(c2w[index, :3, 3], c2w[index + 1, :3, 3], fraction)
        out_pose.append(_pose(rotation, center))
        out_K.append(torch.lerp(K[index], K[index + 1], fraction))
    return torch.stack(out_K), torch.stack(out_pose)
