"""A run resolved once: the recipe and the built backbone become a `RunPlan` before training.

The supervised layers are validated here and nowhere else in training: `check_recipe` refuses
a layer outside the registry's spec of the full config before anything is built, `plan_run`
resolves None / "auto" / numbers against the built backbone and pins the method's options.
The Trainer reads the plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cameo_cli.alignment.method import AlignmentMethod, parse_options
from cameo_cli.backbone import MultiViewBackbone
from cameo_cli.config import LayerChoice, Recipe, auto_layer_count
from cameo_cli.errors import CameoError
from cameo_cli.registry import get_alignment_spec, get_spec


@dataclass(frozen=True)
class RunPlan:
    """What a training run does, fixed before the Trainer exists."""

    recipe: Recipe  # alignment.layer and alignment.options resolved (what checkpoints record)
    method: type[AlignmentMethod] | None  # None: L = L_denoise only (the baseline)
    needs_geometry: bool  # the training dataset must hold point maps


def _check_range(layer: int, name: str, count: int, default: int) -> None:
    if not 0 <= layer < count:
        raise CameoError(
            f"layer {layer} is outside backbone '{name}' (valid: 0-{count - 1}), default {default}"
        )


def needs_geometry(recipe: Recipe) -> bool:
    """Whether the training dataset must hold point maps (CAMEO's targets come from them)."""
    return "geometry" in get_alignment_spec(recipe.alignment.method).needs


def check_recipe(recipe: Recipe) -> None:
    """Fail fast, before building anything: unknown backbone or method, a layer outside the
    full config, options training does not support."""
    if recipe.codec.cache_latents:
        raise CameoError(
            "codec.cache_latents: training does not cache latents (views are drawn and cropped "
            "afresh every epoch); set it to false"
        )
    parse_options(get_alignment_spec(recipe.alignment.method), recipe)
    spec = get_spec(recipe.backbone.name)
    layer = recipe.alignment.layer
    if recipe.backbone.variant == "full" and isinstance(layer, int | list):
        for number in layer if isinstance(layer, list) else [layer]:
            _check_range(number, spec.name, len(spec.layer_paths), spec.default_layer)


def resolve_layer(recipe: Recipe, backbone: MultiViewBackbone) -> int | list[int]:
    """The supervised layer(s), from alignment.layer: None = the backbone's default, "auto" =
    diagnose's recommendation for the recipe's (backbone, variant) ("auto:K": its K best, a
    list), else a number or a list of numbers; each must exist in the built backbone and, for
    a method that probes attention, attend across views."""
    layer: LayerChoice = recipe.alignment.layer
    if layer is None:
        return backbone.default_layer
    count = auto_layer_count(layer)
    if count is not None:
        from cameo_cli.layers import read_recommended_layers

        layer = read_recommended_layers(recipe.backbone.name, recipe.backbone.variant, count)
        layer = layer[0] if count == 1 else layer
    numbers = layer if isinstance(layer, list) else [layer]
    if not numbers or any(isinstance(n, bool) or not isinstance(n, int) for n in numbers):
        raise CameoError(
            "alignment.layer must be a layer number, a list of them, 'auto', 'auto:K' or null, "
            f"got {layer!r}"
        )
    probes = "probe" in get_alignment_spec(recipe.alignment.method).needs
    for number in numbers:
        _check_range(number, backbone.name, len(backbone.hooks), backbone.default_layer)
        if probes and number not in backbone.multiview_layers:
            views = ", ".join(str(i) for i in sorted(backbone.multiview_layers))
            raise CameoError(
                f"layer {number} of backbone '{backbone.name}' attends within each view only, "
                f"so CAMEO cannot supervise it; choose a multi-view layer ({views})"
            )
    return numbers[0] if len(numbers) == 1 else numbers


def plan_run(recipe: Recipe, backbone: MultiViewBackbone) -> RunPlan:
    """Resolve the recipe against the built backbone: the method, its layers and options."""
    method = get_alignment_spec(recipe.alignment.method).load_method()
    if method is None:
        return RunPlan(recipe, None, False)
    alignment = dataclasses.replace(recipe.alignment, layer=resolve_layer(recipe, backbone))
    pinned = dataclasses.replace(recipe, alignment=alignment)
    options = method.resolve_options(pinned, backbone)
    pinned = dataclasses.replace(pinned, alignment=dataclasses.replace(alignment, options=options))
    return RunPlan(pinned, method, needs_geometry(pinned))
