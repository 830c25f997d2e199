"""A stand-in for the `vggt` package (same module paths and call signatures) for tests.

`install(monkeypatch, render)` puts modules `vggt.models.vggt` (class `VGGT`) and
`vggt.utils.pose_enc` (`pose_encoding_to_extri_intri`) into `sys.modules`. `VGGT()(images)`
takes `[1, S, 3, h, w]` in [0, 1], recognises which frames of the synthetic `render` it was
given (nearest image), and returns what VGGT returns for them: `depth [1, S, h, w, 1]`,
`depth_conf [1, S, h, w]` (>= 1, spatially smooth) and `pose_enc [1, S, 9]` (translation,
quaternion xyzw, two fields of view), in its own frame: the true cameras and depth under a
random similarity transform drawn per call (scale in [0.2, 5]), plus relative noise on
depth and camera centres. Rotations are encoded with scipy's `Rotation`, independently of cameo.

`VGGT().aggregator` is a tiny random `Aggregator` with the real one's interface and weight
names: `aggregator(images [B, S, 3, H, W] in [0, 1])` -> (a list of `LAYERS` tensors
`[B, S, 5 + patches, 2 * EMBED]`, 5 = `patch_start_idx`): ImageNet normalisation inside, a
/`PATCH` patch embedding (`patch_embed.patch_embed.proj`), a camera and 4 register tokens (the
first frame's own), then per layer an attention block within each frame and one across all
frames, their outputs concatenated. `save_weights(path)` writes `VGGT()`'s weights.
"""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy.spatial.transform import Rotation

PATCH, EMBED, LAYERS, REGISTERS = 2, 6, 3, 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Attention(torch.nn.Module):
    """x + proj(softmax attention of x over its sequence)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(EMBED, 3 * EMBED)
        self.proj = torch.nn.Linear(EMBED, EMBED)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return x + self.proj(F.scaled_dot_product_attention(q, k, v))


class _PatchTrunk(torch.nn.Module):
    """Where VGGT holds its DINOv2 trunk: `patch_embed.proj` is the patch convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = torch.nn.Module()
        self.patch_embed.proj = torch.nn.Conv2d(3, EMBED, PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed.proj(x).flatten(2).transpose(1, 2)


class Aggregator(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = _PatchTrunk()
        self.camera_token = torch.nn.Parameter(torch.randn(1, 2, 1, EMBED))
        self.register_token = torch.nn.Parameter(torch.randn(1, 2, REGISTERS, EMBED))
        self.frame_blocks = torch.nn.ModuleList(_Attention() for _ in range(LAYERS))
        self.global_blocks = torch.nn.ModuleList(_Attention() for _ in range(LAYERS))
        self.patch_start_idx = 1 + REGISTERS
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), False)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        batch, views, _, height, width = images.shape
        assert height % PATCH == 0 and width % PATCH == 0
        patches = self.patch_embed(((images - self.mean) / self.std).flatten(0, 1))
        special = torch.cat([self.camera_token, self.register_token], dim=2)  # [1, 2, 5, E]
        first, others = special[:, :1], special[:, 1:].expand(1, views - 1, -1, -1)
        special = torch.cat([first, others], dim=1).expand(batch, -1, -1, -1)
        tokens = torch.cat([special.flatten(0, 1), patches], dim=1)  # [B*S, P, E]
        outputs = []
        for frame_block, global_block in zip(self.frame_blocks, self.global_blocks, strict=True):
            framed = frame_block(tokens)
            joint = global_block(framed.reshape(batch, -1, EMBED)).reshape(framed.shape)
            outputs.append(torch.cat([framed, joint], dim=-1).unflatten(0, (batch, views)))
            tokens = joint
        return outputs, self.patch_start_idx


def save_weights(path, seed: int = 0) -> None:
    """Write the weights of `VGGT()` (its aggregator, seeded) as safetensors."""
    torch.manual_seed(seed)
    state = {f"aggregator.{k}": v.contiguous() for k, v in Aggregator().state_dict().items()}
    save_file(state, str(path))


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
    monkeypatch,
    render=None,
    *,
    depth_noise: float = 0.003,
    pose_noise: float = 0.003,
    seed: int = 0,
) -> dict:
    """Install the stand-in for `render` (a `SceneRender`; None: the aggregator only); returns
    its state (`calls`: the frames of every call, `similarity`: (scale, R, t) of every call)."""
    state = {"calls": [], "similarity": [], "rng": np.random.default_rng(seed)}
    if render is not None:
        truth = torch.from_numpy(render.images).permute(0, 3, 1, 2).double() / 255.0

    class VGGT(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.aggregator = Aggregator()

        def forward(self, images: torch.Tensor) -> dict:
            assert render is not None, "the stand-in was installed without a render"
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
