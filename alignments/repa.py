"""REPA (Yu et al. 2025) as a multi-view baseline: a block's hidden state, projected per token
by an MLP (hidden -> 2048 -> 2048 -> teacher dim, SiLU), to DINOv2 patch tokens of each view.

The student is the output of `alignment.options.block` (default: the block holding the
supervised layer; CAT3D: `up_blocks.2.attentions.0`, 32x32x640 at 512 px). The teacher is a
transformers `Dinov2Model` from a local folder, run on every view resized (bicubic) to
`teacher_resolution` and ImageNet-normalised; its tokens after the final LayerNorm, CLS
dropped. The grids must match exactly (448 px for a 32x32 student with /14 patches) unless
`resample: bilinear` upsamples the projection to the teacher grid (U-REPA's mid-block
placement; the teacher then runs at REPA's 224 px per 256 px of image: 448 at 512 px).
Loss: the mean negative cosine over every token of every view, at every timestep.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cameo.alignments import REPA
from cameo_cli.alignment.method import (
    AlignmentInputs,
    AlignmentMethod,
    AlignmentNeeds,
    AlignmentOutput,
    block_grid,
    block_of_layer,
    block_tokens,
    layer_weights,
    output_channels,
    parse_options,
    recipe_layers,
)
from cameo_cli.errors import CameoError
from cameo_cli.files import read_json

if TYPE_CHECKING:
    from cameo_cli.backbone import MultiViewBackbone
    from cameo_cli.config import Recipe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESAMPLE = ("none", "bilinear")


def projector(student_dim: int, hidden: int, teacher_dim: int) -> nn.Sequential:
    """REPA's `build_mlp`: Linear -> SiLU -> Linear -> SiLU -> Linear, applied per token."""
    return nn.Sequential(
        nn.Linear(student_dim, hidden),
        nn.SiLU(),
        nn.Linear(hidden, hidden),
        nn.SiLU(),
        nn.Linear(hidden, teacher_dim),
    )


def negative_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of -cos(prediction, target) along the last axis."""
    return -(F.normalize(prediction, dim=-1) * F.normalize(target, dim=-1)).sum(-1).mean()


class TeacherAlignment(AlignmentMethod):
    """A projection of one block's hidden state aligned to a frozen teacher's patch features
    of each view (REPA; Geometry Forcing adds its scale term). Subclasses name the teacher:
    `teacher_facts` (patch size and feature channels, read without loading it),
    `load_teacher`, and `terms`."""

    def __init__(self, options: dict[str, Any], grid: tuple[int, int], weight: float) -> None:
        super().__init__()
        self.options = options
        self.block = options["block"]
        self.grid = grid
        side = options["teacher_resolution"] // options["teacher_patch"]
        self.teacher_grid = (side, side)
        self.weight = weight
        self.projector = projector(
            options["student_dim"], options["projector_dim"], options["teacher_dim"]
        )

    @classmethod
    @abstractmethod
    def teacher_facts(cls, options: dict[str, Any]) -> tuple[int, int]:
        """(patch size, feature channels) of the teacher at `options["teacher"]`."""

    @classmethod
    def default_teacher_resolution(
        cls, size: int, patch: int, grid: tuple[int, int], resample: str
    ) -> int:
        """The teacher's input size when the recipe leaves it out: the student's grid."""
        return patch * grid[0]

    @classmethod
    def resolve_options(cls, recipe: Recipe, backbone: MultiViewBackbone) -> dict[str, Any]:
        options = parse_options(cls.spec, recipe)
        name = cls.spec.name
        if options["resample"] not in RESAMPLE:
            raise CameoError(
                f"alignment.options.resample: expected one of {', '.join(RESAMPLE)}, "
                f"got {options['resample']!r}"
            )
        if options["block"] is None:
            options["block"] = block_of_layer(backbone.hooks[recipe_layers(recipe)[0]].path)
        size = recipe.data.resolution
        grid = block_grid(backbone, options["block"], (size, size))
        patch, channels = cls.teacher_facts(options)
        if options["teacher_resolution"] is None:
            options["teacher_resolution"] = cls.default_teacher_resolution(
                size, patch, grid, options["resample"]
            )
        resolution = options["teacher_resolution"]
        if resolution % patch:
            raise CameoError(
                f"alignment.options.teacher_resolution: {resolution} px is not a multiple of "
                f"the teacher's {patch} px patches"
            )
        side = resolution // patch
        if (side, side) != grid and options["resample"] == "none":
            raise CameoError(
                f"{name}: the teacher grid {side}x{side} ({resolution} px / {patch}) does not "
                f"match block '{options['block']}' ({grid[0]}x{grid[1]} tokens); set "
                f"alignment.options.teacher_resolution={patch * grid[0]} or resample=bilinear"
            )
        options["student_dim"] = output_channels(backbone.model.get_submodule(options["block"]))
        options["teacher_dim"] = channels
        options["teacher_patch"] = patch
        return options

    @classmethod
    def build(cls, recipe: Recipe, backbone: MultiViewBackbone) -> TeacherAlignment:
        options = dict(recipe.alignment.options)
        size = recipe.data.resolution
        grid = block_grid(backbone, options["block"], (size, size))
        return cls(options, grid, layer_weights(recipe, 1)[0])

    @property
    def needs(self) -> AlignmentNeeds:
        return AlignmentNeeds(blocks=(self.block,))

    def project(self, inputs: AlignmentInputs) -> torch.Tensor:
        """The projected student tokens `[B, F, teacher h·w, teacher dim]` (fp32; fp64 for
        fp64 inputs)."""
        batch, views = inputs.ref_mask.shape
        tokens = block_tokens(inputs.blocks[self.block], batch, views, self.grid)
        tokens = tokens.to(torch.float64 if tokens.dtype == torch.float64 else torch.float32)
        projected = self.projector(tokens)
        if self.grid != self.teacher_grid:
            planes = projected.flatten(0, 1).transpose(1, 2).unflatten(2, self.grid)
            planes = F.interpolate(planes, size=self.teacher_grid, mode="bilinear")
            projected = planes.flatten(2).transpose(1, 2).unflatten(0, (batch, views))
        return projected

    @abstractmethod
    def terms(self, projected: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms; their sum times `weight` is added to L_denoise."""

    def forward(self, inputs: AlignmentInputs) -> AlignmentOutput:
        with torch.autocast(inputs.ref_mask.device.type, enabled=False):
            projected = self.project(inputs)
            teacher = inputs.teacher.to(projected.dtype)
            if teacher.shape != projected.shape:
                raise ValueError(
                    f"teacher features {tuple(teacher.shape)} do not match the projection "
                    f"{tuple(projected.shape)}"
                )
            terms = self.terms(projected, teacher)
            return AlignmentOutput(self.weight * sum(terms.values()), terms)


def _dinov2_config(options: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    folder = options["teacher"]
    if folder is None:
        raise CameoError(
            "repa needs DINOv2 weights: set alignment.options.teacher to a local "
            "transformers Dinov2Model folder (e.g. facebook/dinov2-base saved with save_pretrained)"
        )
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise CameoError(f"{path}: not a local transformers DINOv2 folder (no config.json)")
    config = read_json(path / "config.json", "DINOv2 config")
    if config.get("model_type") != "dinov2":
        raise CameoError(f"{path}: a '{config.get('model_type')}' model, not a Dinov2Model")
    return path, config


class DinoTeacher(nn.Module):
    """DINOv2 patch tokens (after the final LayerNorm, CLS dropped) of each view."""

    def __init__(self, folder: Path, resolution: int) -> None:
        super().__init__()
        from transformers import Dinov2Model

        try:
            model = Dinov2Model.from_pretrained(str(folder), local_files_only=True)
        except OSError as error:
            raise CameoError(
                f"{folder}: cannot load DINOv2 ({str(error).splitlines()[0]})"
            ) from None
        self.model = model.eval().requires_grad_(False)
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, F, 3, H, W] in [-1, 1] -> [B, F, patches, dim]."""
        size = (self.resolution, self.resolution)
        pixels = (images.flatten(0, 1).float() + 1) / 2
        pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False)
        pixels = (pixels - self.mean) / self.std
        tokens = self.model(pixel_values=pixels).last_hidden_state[:, 1:]
        return tokens.unflatten(0, images.shape[:2])


class Repa(TeacherAlignment):
    spec = REPA

    @classmethod
    def default_teacher_resolution(
        cls, size: int, patch: int, grid: tuple[int, int], resample: str
    ) -> int:
        """The student's grid, or for a resampled student REPA's own size: 16 patches per
        256 px of image (``preprocess_raw_image``: 224 * (resolution // 256) with /14
        patches), at least 16."""
        if resample == "bilinear":
            return patch * 16 * max(1, size // 256)
        return patch * grid[0]

    @classmethod
    def teacher_facts(cls, options: dict[str, Any]) -> tuple[int, int]:
        _, config = _dinov2_config(options)
        return int(config["patch_size"]), int(config["hidden_size"])

    def load_teacher(self, recipe: Recipe, device: torch.device) -> nn.Module:
        folder, _ = _dinov2_config(self.options)
        return DinoTeacher(folder, self.options["teacher_resolution"]).to(device)

    def terms(self, projected: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"repa": negative_cosine(projected, teacher)}
