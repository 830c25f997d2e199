"""A stand-in for the `vggt` package (same module paths and call signatures) for tests.

`install(monkeypatch, render)` puts modules `vggt.models.vggt` (class `VGGT`) and
`vggt.utils.pose_enc` (`pose_encoding_to_extri_intri`) into `sys.modules`. `VGGT()(images)`
takes `[1, S, 3, h, w]` in [0, 1], recognises which frames of the synthetic `render` it was
given (nearest image), and returns what VGGT returns for them: `depth [1, S, h, w, 1]`,
`depth_conf [1, S, h, w]` (>= 1, spatially smooth) and `pose_enc [1, S, 9]` (translation,
quaternion xyzw, two fields of view), in its own frame: the true cameras and depth under a
random similarity transform drawn per call (scale in [0.2, 5]), plus relative noise on
depth and camera centres. Rotations are encoded with scipy's `Rotation`, independently of cameo.
"""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation


def pose_encoding_to_extri_intri(pose_enc: torch.Tensor, image_size_hw) -> tuple:
    """VGGT's decoder: [B, S, 9] -> (world-to-camera [B, S, 3, 4], K [B, S, 3, 3] px)."""
    height, width = image_size_hw
    flat = pose_enc.reshape(-1, 9).double().numpy()
    rotation = Rotation.from_quat(flat[:, 3:7]).as_matrix()  # xyzw, scalar last
    extrinsics = np.concatenate([rotation, flat[:, :3, None]], axis=-1)
    fy = (height / 2) / np.tan(flat[:, 7] / 2)
    fx = (width / 2) / np.tan(flat[:, 8] / 2)
    K = np.zeros((len(flat), 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, width / 2, height / 2, 1
    shape = pose_enc.shape[:2]
    return (
        torch.from_numpy(extrinsics).reshape(*shape, 3, 4),
        torch.from_numpy(K).reshape(*shape, 3, 3),
    )


def _nearest(size: int, out: int) -> np.ndarray:
    return np.minimum(((np.arange(out) + 0.5) * size / out).astype(np.int64), size - 1)


def install(
    monkeypatch, render, *, depth_noise: float = 0.003, pose_noise: float = 0.003, seed: int = 0
) -> dict:
    """Install the stand-in for `render` (a `SceneRender`); returns its state (`calls`: the
    frames of every call, `similarity`: (scale, R, t) of every call)."""
    state = {"calls": [], "similarity": [], "rng": np.random.default_rng(seed)}
    truth = torch.from_numpy(render.images).permute(0, 3, 1, 2).double() / 255.0

    class VGGT(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> dict:
            rng = state["rng"]
            _, views, _, height, width = images.shape
            small = F.interpolate(images[0].double(), size=truth.shape[-2:], mode="area")
            frames = [int(((truth - view).square().mean((1, 2, 3))).argmin()) for view in small]
            state["calls"].append(frames)
            scale = float(np.exp(rng.uniform(np.log(0.2), np.log(5.0))))
            rot = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
            shift = rng.normal(size=3)
            state["similarity"].append((scale, rot, shift))
            w2c = render.world_to_camera[frames]
            centres = np.einsum("nji,nj->ni", w2c[:, :3, :3], -w2c[:, :3, 3])
            spread = np.linalg.norm(centres - centres.mean(0), axis=-1).mean()
            centres = centres + rng.normal(size=centres.shape) * pose_noise * spread
            new_centres = scale * centres @ rot.T + shift
            new_rot = w2c[:, :3, :3] @ rot.T  # camera-from-world in the new frame
            translation = -np.einsum("nij,nj->ni", new_rot, new_centres)
            rows = _nearest(render.depth.shape[1], height)
            cols = _nearest(render.depth.shape[2], width)
            depth = render.depth[frames][:, rows][:, :, cols].astype(np.float64) * scale
            depth = depth * (1.0 + depth_noise * rng.normal(size=depth.shape))
            # smooth, like VGGT's: a coarse random field, bilinearly upsampled
            coarse = torch.from_numpy(rng.normal(size=(views, 1, 4, 4)))
            field = F.interpolate(coarse, size=(height, width), mode="bilinear")[:, 0]
            confidence = 1.0 + field.exp().numpy()
            fov = [
                2 * math.atan(render.intrinsics[0][1, 2] / render.intrinsics[0][1, 1]),
                2 * math.atan(render.intrinsics[0][0, 2] / render.intrinsics[0][0, 0]),
            ]
            pose = np.concatenate(
                [
                    translation,
                    Rotation.from_matrix(new_rot).as_quat(),
                    np.tile(fov, (views, 1)),
                ],
                axis=-1,
            )
            return {
                "depth": torch.from_numpy(depth)[None, ..., None].float(),
                "depth_conf": torch.from_numpy(confidence)[None].float(),
                "pose_enc": torch.from_numpy(pose)[None].float(),
            }

    for name, attrs in {
        "vggt": {},
        "vggt.models": {},
        "vggt.models.vggt": {"VGGT": VGGT},
        "vggt.utils": {},
        "vggt.utils.pose_enc": {"pose_encoding_to_extri_intri": pose_encoding_to_extri_intri},
    }.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    return state
