"""Optional depth and cameras predicted by VGGT (facebookresearch/vggt) for data without depth.

Used only when the `vggt` package is importable and a local weights file is given; there is
no fallback and no download. `VGGTDepth` runs one call on a window of frames and returns
VGGT's depth, its confidence and its cameras, all in VGGT's own frame and scale (defined per
call). Points are never taken from VGGT's point head: following VGGT's authors (depth +
cameras is more accurate), cameo unprojects the depth with the dataset's own cameras once one
scale per scene is fitted (`cameo_cli.geometry.scale_fit`). `load_vggt` and
`aggregator_facts` are also the Geometry Forcing teacher's (`alignments/geometry_forcing.py`).
"""

from __future__ import annotations

import importlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cameo_cli import cameras
from cameo_cli.errors import CameoError
from cameo_cli.files import load_safetensors, safetensors_shapes

INSTALL_HINT = (
    "install it with `pip install git+https://github.com/facebookresearch/vggt` (or clone the "
    "repository and `pip install -e .`), download the VGGT-1B weights (`model.pt` or "
    "`model.safetensors` from huggingface.co/facebook/VGGT-1B) to a local folder and pass "
    "that file or folder"
)
WEIGHT_FILES = ("model.safetensors", "model.pt")
PATCH = 14  # VGGT's patch size: input sides must be multiples of it


def import_vggt():
    """(VGGT class, pose_encoding_to_extri_intri) from the installed `vggt` package."""
    try:
        model_module = importlib.import_module("vggt.models.vggt")
        pose_module = importlib.import_module("vggt.utils.pose_enc")
    except ImportError as error:
        raise CameoError(f"VGGT needs the `vggt` package ({error}); {INSTALL_HINT}") from None
    return model_module.VGGT, pose_module.pose_encoding_to_extri_intri


def weights_file(weights: str | Path) -> Path:
    """The weights file itself, or the first of `WEIGHT_FILES` in a folder."""
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


def _load_state_dict(path: Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError) as error:
        raise CameoError(f"{path}: not VGGT weights ({str(error).splitlines()[0]})") from None


def load_vggt(weights: str | Path, device: torch.device) -> nn.Module:
    """The installed package's `VGGT()` with local weights, in eval mode on `device`."""
    model_class, _ = import_vggt()
    path = weights_file(weights)
    model = model_class()
    try:
        model.load_state_dict(_load_state_dict(path))
    except (RuntimeError, ValueError) as error:
        raise CameoError(f"{path}: not VGGT weights ({str(error).splitlines()[0]})") from None
    return model.eval().to(device)


@dataclass(frozen=True)
class AggregatorFacts:
    """The shape of VGGT's aggregator, read from its weights without loading them."""

    patch: int  # patch size in px
    channels: int  # channels of each layer's output: frame and global attention concatenated
    layers: int  # layers in its output list (24 for VGGT-1B)


def aggregator_facts(weights: str | Path) -> AggregatorFacts:
    """Patch size, output channels and depth of the aggregator of the weights `weights`."""
    path = weights_file(weights)
    if path.suffix == ".safetensors":
        shapes = safetensors_shapes(path)
    else:
        shapes = {k: tuple(v.shape) for k, v in _load_state_dict(path, mmap=True).items()}
    patch_key = "aggregator.patch_embed.patch_embed.proj.weight"
    token_key = "aggregator.camera_token"
    if patch_key not in shapes or token_key not in shapes:
        raise CameoError(f"{path}: not VGGT weights (no {patch_key} or {token_key})")
    blocks = {k.split(".")[2] for k in shapes if k.startswith("aggregator.frame_blocks.")}
    return AggregatorFacts(shapes[patch_key][-1], 2 * shapes[token_key][-1], len(blocks))


def default_device() -> torch.device:
    """This process's GPU (``cuda:LOCAL_RANK``: each rank of a ``torchrun`` launch its own,
    ``cuda:0`` in a single process), or the CPU without CUDA."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


@dataclass
class VGGTPrediction:
    """One VGGT call on F frames, at VGGT's input size (h, w), in VGGT's frame and scale."""

    depth: torch.Tensor  # [F, h, w] float64 z-depth
    confidence: torch.Tensor  # [F, h, w] float64 (>= 1; higher is more certain)
    world_to_camera: torch.Tensor  # [F, 4, 4] float64 OpenCV, VGGT's world (~ first camera)


class VGGTDepth:
    """VGGT loaded once from local weights; call it on the frames of one window."""

    def __init__(
        self,
        weights: str | Path,
        *,
        device: torch.device | str | None = None,
        resolution: int = 518,
    ) -> None:
        _, self._pose_to_cameras = import_vggt()
        self.device = torch.device(device or default_device())
        self.resolution = resolution
        self.model = load_vggt(weights, self.device)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The longer side at `resolution`, both sides rounded to multiples of the patch size."""
        scale = self.resolution / max(height, width)
        return (
            max(PATCH, round(height * scale / PATCH) * PATCH),
            max(PATCH, round(width * scale / PATCH) * PATCH),
        )

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> VGGTPrediction:
        """images [F, 3, H, W] in [-1, 1] -> VGGT's depth, confidence and cameras."""
        size = self.input_size(*images.shape[-2:])
        pixels = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0).to(self.device)
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            predictions = self.model(pixels[None])
        # the camera and depth heads run in fp32 inside VGGT; decode poses in float64 (small
        # RealEstate10K baselines are sensitive to precision)
        extrinsics, _ = self._pose_to_cameras(predictions["pose_enc"].double(), size)
        return VGGTPrediction(
            depth=predictions["depth"][0, ..., 0].double().cpu(),
            confidence=predictions["depth_conf"][0].double().cpu(),
            world_to_camera=cameras.pose_from_3x4(extrinsics[0].double().cpu()),
        )
