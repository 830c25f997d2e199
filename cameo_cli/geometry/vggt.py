"""Optional point maps predicted by VGGT (facebookresearch/vggt) for data without depth.

Used only when the `vggt` package is importable and a local weights file is given; there is
no fallback and no download. VGGT predicts points in the frame of the first input camera at
its own scale; `VGGTPointMaps` maps them into the sample's world frame (see `__call__`).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from cameo_cli import cameras
from cameo_cli.errors import CameoError
from cameo_cli.io import load_safetensors

INSTALL_HINT = (
    "install it with `pip install git+https://github.com/facebookresearch/vggt` (or clone the "
    "repository and `pip install -e .`), download the VGGT-1B weights (`model.pt` or "
    "`model.safetensors` from huggingface.co/facebook/VGGT-1B) to a local folder and pass "
    "that file or folder"
)
WEIGHT_FILES = ("model.safetensors", "model.pt")
PATCH = 14  # VGGT's patch size: input sides must be multiples of it


def _import_vggt():
    try:
        model_module = importlib.import_module("vggt.models.vggt")
        pose_module = importlib.import_module("vggt.utils.pose_enc")
    except ImportError as error:
        raise CameoError(
            f"--geometry vggt needs the `vggt` package ({error}); {INSTALL_HINT}"
        ) from None
    return model_module.VGGT, pose_module.pose_encoding_to_extri_intri


def _weights_file(weights: str | Path) -> Path:
    path = Path(weights)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise CameoError(
                f"{path}: no VGGT weights ({' or '.join(WEIGHT_FILES)}); {INSTALL_HINT}"
            )
        return found[0]
    if not path.is_file():
        raise CameoError(f"{path}: VGGT weights not found; {INSTALL_HINT}")
    return path


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class VGGTPointMaps:
    """Predict world-frame point maps for the views of one sample with VGGT."""

    def __init__(
        self,
        weights: str | Path,
        *,
        device: torch.device | str | None = None,
        resolution: int = 518,
        min_confidence: float = 0.0,
    ) -> None:
        model_class, self._pose_to_cameras = _import_vggt()
        path = _weights_file(weights)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.resolution = resolution
        self.min_confidence = min_confidence
        model = model_class()
        try:
            model.load_state_dict(_load_state_dict(path))
        except (RuntimeError, ValueError) as error:
            raise CameoError(f"{path}: not VGGT weights ({str(error).splitlines()[0]})") from None
        self.model = model.eval().to(self.device)

    def _input_size(self, height: int, width: int) -> tuple[int, int]:
        """The longer side at `resolution`, both sides rounded to multiples of the patch size."""
        scale = self.resolution / max(height, width)
        return (
            max(PATCH, round(height * scale / PATCH) * PATCH),
            max(PATCH, round(width * scale / PATCH) * PATCH),
        )

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, world_to_camera: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images [F, 3, H, W] in [-1, 1] -> (point_map [F, 3, H, W], valid [F, H, W]).

        With `world_to_camera` [F, 4, 4] the points are put in the sample's world frame: VGGT's
        frame is the first camera's, so the first camera's camera-to-world is applied after
        scaling by (mean distance of the given camera centres from the first) / (the same for
        VGGT's predicted cameras); when either is 0 (cameras that only rotate) the scale is 1.
        Without it the points stay in VGGT's frame (fine for correspondence, which only needs
        one consistent frame per sample). `valid`: finite points with confidence at least
        `min_confidence`.
        """
        views, _, height, width = images.shape
        size = self._input_size(height, width)
        pixels = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0).to(self.device)
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            predictions = self.model(pixels[None])
        points = predictions["world_points"][0].float().permute(0, 3, 1, 2)  # [F, 3, h, w]
        confidence = predictions["world_points_conf"][0].float()  # [F, h, w]
        if world_to_camera is not None:
            extrinsics, _ = self._pose_to_cameras(predictions["pose_enc"], size)
            predicted = cameras.pose_from_3x4(extrinsics[0].float())
            points = self._to_world(points, predicted, world_to_camera.to(points))
        points = F.interpolate(points, size=(height, width), mode="bilinear", align_corners=False)
        confidence = F.interpolate(confidence[:, None], size=(height, width), mode="bilinear")
        valid = torch.isfinite(points).all(1) & (confidence[:, 0] >= self.min_confidence)
        return points.to(images.device), valid.to(images.device)

    @staticmethod
    def _to_world(
        points: torch.Tensor, predicted_w2c: torch.Tensor, world_to_camera: torch.Tensor
    ) -> torch.Tensor:
        """Points in the first predicted camera's frame -> the given cameras' world frame."""
        first_camera = cameras.transform_points(predicted_w2c[0], points.flatten(2).transpose(1, 2))
        given = cameras.camera_centers(world_to_camera)
        ours = cameras.camera_centers(predicted_w2c)
        given_spread = (given - given[:1]).norm(dim=-1).mean().item()
        our_spread = (ours - ours[:1]).norm(dim=-1).mean().item()
        usable = min(given_spread, our_spread) > 1e-8 and math.isfinite(our_spread)
        scale = given_spread / our_spread if usable else 1.0
        world = cameras.transform_points(
            cameras.w2c_to_c2w(world_to_camera[0]), first_camera * scale
        )
        return world.transpose(1, 2).reshape(points.shape)
