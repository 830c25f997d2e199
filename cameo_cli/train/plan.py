"""A run resolved once: the recipe and the built backbone become a `RunPlan` before training.

The supervised layer is validated here and nowhere else in training: `check_recipe` refuses a
layer outside the registry's spec of the full config before anything is built, `plan_run`
resolves None / "auto" / a number against the built backbone. The Trainer reads the plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cameo_cli.backbone import MultiViewBackbone
from cameo_cli.config import LayerChoice, Recipe
from cameo_cli.errors import CameoError


@dataclass(frozen=True)
class RunPlan:
    """What a training run does, fixed before the Trainer exists."""

    recipe: Recipe  # with alignment.layer resolved to the supervised layer's number
    layer: int
    grid: tuple[int, int] | None  # token grid of `layer` per view (None without CAMEO)
    heads: int | None  # attention heads of `layer` (None without CAMEO)
    cameo: bool  # L = L_denoise + weight * L_cameo; False: L_denoise only (the baseline)
    needs_geometry: bool  # the training dataset must hold point maps


def _check_range(layer: int, name: str, count: int, default: int) -> None:
    if not 0 <= layer < count:
        raise CameoError(
            f"layer {layer} is outside backbone '{name}' (valid: 0-{count - 1}), default {default}"
        )


def needs_geometry(recipe: Recipe) -> bool:
    """Whether the training dataset must hold point maps (CAMEO's targets come from them)."""
    return recipe.alignment.method == "cameo"


def check_recipe(recipe: Recipe) -> None:
    """Fail fast, before building anything: unknown backbone, a layer outside the full
    config, options training does not support."""
    from cameo_cli.registry import get_spec

    if recipe.codec.cache_latents:
        raise CameoError(
            "codec.cache_latents: training does not cache latents (views are drawn and cropped "
            "afresh every epoch); set it to false"
        )
    spec = get_spec(recipe.backbone.name)
    layer = recipe.alignment.layer
    if recipe.backbone.variant == "full" and isinstance(layer, int):
        _check_range(layer, spec.name, len(spec.layer_paths), spec.default_layer)


def resolve_layer(recipe: Recipe, backbone: MultiViewBackbone) -> int:
    """The layer CAMEO supervises, from alignment.layer: None = the backbone's default,
    "auto" = diagnose's recommendation for the recipe's (backbone, variant), else a number;
    it must exist in the built backbone and attend across views."""
    layer: LayerChoice = recipe.alignment.layer
    if layer is None:
        return backbone.default_layer
    if layer == "auto":
        from cameo_cli.layers import read_recommended_layer

        layer = read_recommended_layer(recipe.backbone.name, recipe.backbone.variant)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise CameoError(f"alignment.layer must be a layer number, 'auto' or null, got {layer!r}")
    _check_range(layer, backbone.name, len(backbone.hooks), backbone.default_layer)
    if layer not in backbone.multiview_layers:
        views = ", ".join(str(i) for i in sorted(backbone.multiview_layers))
        raise CameoError(
            f"layer {layer} of backbone '{backbone.name}' attends within each view only, so "
            f"CAMEO cannot supervise it; choose a multi-view layer ({views})"
        )
    return layer


def plan_run(recipe: Recipe, backbone: MultiViewBackbone) -> RunPlan:
    """Resolve the recipe against the built backbone: layer, token grid, heads, data needs."""
    cameo = needs_geometry(recipe)
    if not cameo:
        return RunPlan(recipe, backbone.default_layer, None, None, False, False)
    layer = resolve_layer(recipe, backbone)
    size = recipe.data.resolution
    heads = backbone.layers(size)[layer].heads
    grid = backbone.token_grid(layer, (size, size))
    pinned = dataclasses.replace(
        recipe, alignment=dataclasses.replace(recipe.alignment, layer=layer)
    )
    return RunPlan(pinned, layer, grid, heads, cameo=True, needs_geometry=True)
