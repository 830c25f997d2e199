"""Turn a recipe into the pieces of a run: backbone, layer, dataset, alignment head.

Every check that can fail on user input runs here, before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from cameo_cli.backbone import MultiViewBackbone
from cameo_cli.config import Recipe
from cameo_cli.errors import CameoError

PREPARE_HINT = (
    "prepare one with point maps: `cameo prepare synthetic --out DIR` (rendered depth), "
    "`cameo prepare dtu ... --geometry depth` or `cameo prepare re10k ... --geometry vggt "
    "--vggt-weights DIR`; or train the baseline with --align none"
)


def check_backbone_and_layer(recipe: Recipe) -> None:
    """Fail fast, before building anything: unknown backbone, layer outside the full config,
    options training does not support."""
    from cameo_cli.registry import get_spec

    if recipe.codec.cache_latents:
        raise CameoError(
            "codec.cache_latents: training does not cache latents (views are drawn and cropped "
            "afresh every epoch); set it to false"
        )
    spec = get_spec(recipe.backbone.name)
    layer = recipe.alignment.layer
    count = len(spec.layer_paths)
    if recipe.backbone.variant == "full" and isinstance(layer, int) and not 0 <= layer < count:
        raise CameoError(
            f"layer {layer} is outside backbone '{spec.name}' (valid: 0-{count - 1}, "
            f"default {spec.default_layer})"
        )


def build_training_backbone(recipe: Recipe, in_channels: int) -> MultiViewBackbone:
    """The recipe's backbone (unknown names are reported with the registered ones)."""
    from cameo_cli.registry import build_backbone

    config = recipe.backbone
    backbone = build_backbone(
        config.name,
        variant=config.variant,
        in_channels=in_channels,
        pretrained=config.pretrained,
        qk_norm=config.qk_norm,
    )
    if config.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    return backbone


def resolve_layer(recipe: Recipe, backbone: MultiViewBackbone) -> int:
    """alignment.layer: None = the backbone's default, "auto" = diagnose's recommendation."""
    layer = recipe.alignment.layer
    if layer is None:
        return backbone.default_layer
    if layer == "auto":
        from cameo_cli.layers import read_recommended_layer

        layer = read_recommended_layer(recipe.backbone.name, recipe.backbone.variant)
    if isinstance(layer, str):
        raise CameoError(f"alignment.layer must be a layer number, 'auto' or null, got {layer!r}")
    backbone.check_layer(layer)
    if layer not in backbone.multiview_layers:
        views = ", ".join(str(i) for i in sorted(backbone.multiview_layers))
        raise CameoError(
            f"layer {layer} of backbone '{backbone.name}' attends within each view only, so "
            f"CAMEO cannot supervise it; choose a multi-view layer ({views})"
        )
    return layer


def open_dataset(recipe: Recipe, *, needs_geometry: bool, split: str | None) -> Dataset:
    """The recipe's prepared dataset; with CAMEO it must hold point maps."""
    from cameo_cli.data.dataset import dataset_from_recipe

    data = recipe.data
    if not data.dataset:
        raise CameoError(
            "no dataset: pass --dataset DIR or --set data.dataset=DIR "
            "(a folder written by `cameo prepare`, e.g. `cameo prepare synthetic --out DIR`)"
        )
    root = Path(data.dataset).expanduser()
    if not (root / "index.json").is_file():
        raise CameoError(
            f"{root}: not a prepared dataset (no index.json); create it with `cameo prepare`"
        )
    dataset = dataset_from_recipe(root, recipe, seed=recipe.train.seed, split=split)
    if needs_geometry and not dataset.has_geometry:
        raise CameoError(
            f"{root}: the dataset has no point maps, which --align cameo needs; {PREPARE_HINT}"
        )
    return dataset


@dataclass
class AlignmentSetup:
    layer: int
    grid: tuple[int, int]  # token grid of the layer per view
    heads: int


def alignment_setup(recipe: Recipe, backbone: MultiViewBackbone) -> AlignmentSetup:
    """Layer, its token grid at the recipe's resolution and its number of heads."""
    layer = resolve_layer(recipe, backbone)
    size = recipe.data.resolution
    info = backbone.layers(size)[layer]
    return AlignmentSetup(
        layer=layer, grid=backbone.token_grid(layer, (size, size)), heads=info.heads
    )
