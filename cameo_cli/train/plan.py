"""A run resolved once: the recipe and the built backbone become a `RunPlan` before training.

The supervised layers are resolved here and nowhere else in training (parsed and range-checked
by `cameo_cli.layer_selection`): `check_recipe` refuses a layer outside the registry's spec of
the full config before anything is built, `plan_run` resolves the selection against the built
backbone for every method and pins the method's layers and options.
The Trainer reads the plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cameo_cli.alignment.method import AlignmentMethod, parse_options
from cameo_cli.backbone import MultiViewBackbone
from cameo_cli.config import Recipe
from cameo_cli.errors import CameoError
from cameo_cli.layer_selection import LayerSelection
from cameo_cli.registry import get_alignment_spec, get_spec


@dataclass(frozen=True)
class RunPlan:
    """What a training run does, fixed before the Trainer exists."""

    recipe: Recipe  # alignment.layer and alignment.options resolved (what checkpoints record)
    method: type[AlignmentMethod] | None  # None: L = L_denoise only (the baseline)
    needs_geometry: bool  # the training dataset must hold point maps
    # the resolved alignment.layer, for every method (`none`: the layer validation watches)
    layers: tuple[int, ...]


def needs_geometry(recipe: Recipe) -> bool:
    """Whether the training dataset must hold point maps (CAMEO's targets come from them)."""
    return "geometry" in get_alignment_spec(recipe.alignment.method).needs


def check_recipe(recipe: Recipe) -> None:
    """Fail fast, before building anything: unknown backbone or method, a layer outside the
    full config, options training does not support (`check_shardable`)."""
    if recipe.codec.cache_latents:
        raise CameoError(
            "codec.cache_latents: training does not cache latents (views are drawn and cropped "
            "afresh every epoch); set it to false"
        )
    parse_options(get_alignment_spec(recipe.alignment.method), recipe)
    spec = get_spec(recipe.backbone.name)
    if recipe.train.sharding == "fsdp":
        check_shardable(recipe, spec.blocks)
    if recipe.backbone.variant == "full":
        selection = LayerSelection.parse(recipe.alignment.layer)
        selection.check(spec.name, len(spec.layer_paths), spec.default_layer)


def check_shardable(recipe: Recipe, blocks: tuple[str, ...]) -> None:
    """`train.sharding: fsdp` needs the backbone's block list (its spec's `blocks`) and a
    precision without a gradient scaler."""
    if not blocks:
        raise CameoError(
            f"train.sharding fsdp: backbone '{recipe.backbone.name}' names no blocks to shard "
            "(its BackboneSpec.blocks is empty); train it with train.sharding=ddp"
        )
    if recipe.train.mixed_precision == "fp16":
        raise CameoError(
            "train.sharding fsdp: train.mixed_precision fp16 needs a gradient scaler over "
            "sharded gradients, which cameo does not run; use bf16 or no"
        )


def resolve_layer(recipe: Recipe, backbone: MultiViewBackbone) -> int | list[int]:
    """The supervised layer(s), from alignment.layer (`cameo_cli.layer_selection`): None =
    the backbone's default, "auto" = diagnose's recommendation for the recipe's (backbone,
    variant) ("auto:K": its K best, a list), else numbers; each must exist in the built
    backbone and, for a method that probes attention, attend across views."""
    from cameo_cli.layers import read_recommended_layers

    selection = LayerSelection.parse(recipe.alignment.layer)
    numbers = selection.resolve(
        backbone.name,
        len(backbone.hooks),
        backbone.default_layer,
        lambda count: read_recommended_layers(recipe.backbone.name, recipe.backbone.variant, count),
    )
    if "probe" in get_alignment_spec(recipe.alignment.method).needs:
        for number in numbers:
            if number not in backbone.multiview_layers:
                views = ", ".join(str(i) for i in sorted(backbone.multiview_layers))
                raise CameoError(
                    f"layer {number} of backbone '{backbone.name}' attends within each view "
                    f"only, so CAMEO cannot supervise it; choose a multi-view layer ({views})"
                )
    return numbers[0] if len(numbers) == 1 else numbers


def plan_run(recipe: Recipe, backbone: MultiViewBackbone) -> RunPlan:
    """Resolve the recipe against the built backbone: the layers (for every method, `none`
    included), the method and its options."""
    layer = resolve_layer(recipe, backbone)
    layers = tuple(layer) if isinstance(layer, list) else (layer,)
    method = get_alignment_spec(recipe.alignment.method).load_method()
    if method is None:
        return RunPlan(recipe, None, False, layers)
    alignment = dataclasses.replace(recipe.alignment, layer=layer)
    pinned = dataclasses.replace(recipe, alignment=alignment)
    options = method.resolve_options(pinned, backbone)
    pinned = dataclasses.replace(pinned, alignment=dataclasses.replace(alignment, options=options))
    return RunPlan(pinned, method, needs_geometry(pinned), layers)
