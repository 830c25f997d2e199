"""Geometry Forcing (Wu et al. 2025) as a multi-view baseline: a block's hidden state, projected
per token by REPA's MLP, aligned to the VGGT aggregator's features of all views of the sample.

The student is REPA's (`TeacherAlignment`: the output of `alignment.options.block`, default
the block holding the supervised layer). The teacher is the installed `vggt` package's `VGGT`
with local weights (`cameo_cli.geometry.vggt.load_vggt`; no download, no fallback): its
aggregator runs once on all F views of a sample, resized (bilinear) to `teacher_resolution`
in [0, 1], and the target is the patch tokens (camera and register tokens dropped) of layer
`teacher_layer`, frame and global attention concatenated (2048 channels for VGGT-1B). Two
terms, both at every timestep, weighted together by `alignment.weight` (0.5):
- angular: the mean over tokens of -cos(projection, VGGT);
- scale: the MSE between a head (Linear -> ReLU -> Linear) on the L2-normalised projection
  and the raw VGGT features, so the magnitudes the cosine ignores are regressed too.
Where this departs from the released code (its 24 layers as channels of a 512x512 plane):
docs/fidelity.md, section Baselines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cameo.alignments import GEOMETRY_FORCING
from cameo.alignments.repa import TeacherAlignment, negative_cosine
from cameo_cli.errors import CameoError
from cameo_cli.geometry.vggt import INSTALL_HINT, aggregator_facts, import_vggt, load_vggt

if TYPE_CHECKING:
    from cameo_cli.backbone import MultiViewBackbone
    from cameo_cli.config import Recipe


def _weights(options: dict[str, Any]) -> str:
    if options["teacher"] is None:
        raise CameoError(
            "geometry-forcing needs VGGT weights: set alignment.options.teacher to a local "
            f"VGGT-1B weights file or folder; {INSTALL_HINT}"
        )
    return str(Path(options["teacher"]).expanduser())


class VGGTTeacher(nn.Module):
    """The patch tokens of one VGGT aggregator layer, all views of a sample in one call."""

    def __init__(self, weights: str, resolution: int, layer: int, device: torch.device) -> None:
        super().__init__()
        self.aggregator = load_vggt(weights, device).aggregator.requires_grad_(False)
        self.resolution = resolution
        self.layer = layer

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, F, 3, H, W] in [-1, 1] -> [B, F, patches, channels]."""
        size = (self.resolution, self.resolution)
        pixels = (images.flatten(0, 1).float() + 1) / 2
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        pixels = pixels.clamp(0.0, 1.0).unflatten(0, images.shape[:2])
        layers, patch_start = self.aggregator(pixels)
        return layers[self.layer][:, :, patch_start:]


class GeometryForcing(TeacherAlignment):
    spec = GEOMETRY_FORCING

    def __init__(self, options: dict[str, Any], grid: tuple[int, int], weight: float) -> None:
        super().__init__(options, grid, weight)
        channels = options["teacher_dim"]
        self.scale_head = nn.Sequential(
            nn.Linear(channels, options["scale_dim"]),
            nn.ReLU(),
            nn.Linear(options["scale_dim"], channels),
        )

    @classmethod
    def teacher_facts(cls, options: dict[str, Any]) -> tuple[int, int]:
        import_vggt()
        facts = aggregator_facts(_weights(options))
        return facts.patch, facts.channels

    @classmethod
    def resolve_options(cls, recipe: Recipe, backbone: MultiViewBackbone) -> dict[str, Any]:
        options = super().resolve_options(recipe, backbone)
        layers = aggregator_facts(_weights(options)).layers
        layer = options["teacher_layer"]
        if not -layers <= layer < layers:
            raise CameoError(
                f"alignment.options.teacher_layer: {layer} is outside VGGT's {layers} "
                f"aggregator layers (valid: -{layers} to {layers - 1})"
            )
        options["teacher_layer"] = layer % layers
        return options

    def load_teacher(self, recipe: Recipe, device: torch.device) -> nn.Module:
        options = self.options
        return VGGTTeacher(
            _weights(options), options["teacher_resolution"], options["teacher_layer"], device
        )

    def terms(self, projected: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        rescaled = self.scale_head(F.normalize(projected, dim=-1))
        return {
            "angular": negative_cosine(projected, teacher),
            "scale": F.mse_loss(rescaled, teacher),
        }
