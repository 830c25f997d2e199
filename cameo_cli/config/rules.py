"""Cross-field rules: values no job can use, rejected after conversion."""

from __future__ import annotations

import typing
from typing import Any

from cameo_cli.config.convert import _build, _Source
from cameo_cli.config.schema import TRACKERS, Recipe
from cameo_cli.layer_selection import LayerSelection

# Numeric fields with a lower bound: (path, bound, inclusive).
_LOWER_BOUNDS: tuple[tuple[str, float, bool], ...] = (
    *(
        (path, 1, True)
        for path in (
            "codec.factor",
            "data.resolution",
            "data.num_views",
            "data.min_refs",
            "diffusion.num_train_timesteps",
            "train.steps",
            "train.batch_size",
            "train.grad_accumulation",
            "train.log_every",
            "train.checkpoint_every",
            "train.keep_checkpoints",
            "train.validate_every",
            "sample.steps",
        )
    ),
    *(
        (path, 0, True)
        for path in (
            "data.workers",
            "train.weight_decay",
            "train.warmup_steps",
            "train.grad_clip",
            "sample.guidance",
            "evaluate.psnr_cap",
        )
    ),
    *(
        (path, 0, False)
        for path in (
            "codec.scaling_factor",
            "diffusion.beta_start",
            "diffusion.snr_shift",
            "alignment.epsilon",
            "train.learning_rate",
        )
    ),
)
_UNIT_INTERVAL = ("train.camera_drop", "train.ema_decay", "sample.eta", "diffusion.beta_end")


def _value_at(recipe: Recipe, path: str) -> Any:
    value: Any = recipe
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _check_backbone_options(recipe: Recipe, source_of: typing.Callable[[str], _Source]) -> None:
    """`backbone.options` against the backbone's options dataclass (its light spec's
    `parameters`): unknown keys (with the closest valid name), types and choices."""
    options = recipe.backbone.options
    if not options:
        return
    from cameo_cli.registry import get_spec

    path = "backbone.options"
    if "qk_norm" in options:
        raise source_of(f"{path}.qk_norm").error(f"{path}.qk_norm", "is set by 'backbone.qk_norm'")
    parameters = get_spec(recipe.backbone.name).parameters
    for key, value in options.items():  # one at a time: each may come from its own --set
        _build(parameters, {key: value}, path, source_of(f"{path}.{key}"))


def _validate(recipe: Recipe, source_of: typing.Callable[[str], _Source]) -> None:
    """Reject values no job can use; `source_of(path)` says where a value came from."""

    def require(path: str, ok: bool, requirement: str) -> None:
        if not ok:
            message = f"must be {requirement}, got {_value_at(recipe, path)!r}"
            raise source_of(path).error(path, message)

    for path, bound, inclusive in _LOWER_BOUNDS:
        value = _value_at(recipe, path)
        ok = value >= bound if inclusive else value > bound
        require(path, ok, f"{'>=' if inclusive else '>'} {bound}")
    for path in _UNIT_INTERVAL:
        require(path, 0 <= _value_at(recipe, path) <= 1, "between 0 and 1")
    data, layer = recipe.data, recipe.alignment.layer
    chunk = recipe.alignment.chunk_size
    require("alignment.chunk_size", chunk is None or chunk >= 1, ">= 1 or null")
    trackers = recipe.train.trackers
    require("train.trackers", set(trackers) <= set(TRACKERS), f"a list of {', '.join(TRACKERS)}")
    gamma = recipe.diffusion.min_snr_gamma
    require("diffusion.min_snr_gamma", gamma is None or gamma > 0, "> 0 or null")
    try:
        selection = LayerSelection.parse(layer)
    except ValueError as error:
        raise source_of("alignment.layer").error("alignment.layer", str(error)) from None
    weights = recipe.alignment.weight
    weights = weights if isinstance(weights, list) else [weights]
    require("alignment.weight", all(w >= 0 for w in weights), ">= 0")
    if isinstance(recipe.alignment.weight, list):
        require("alignment.weight", len(weights) == selection.count, "one number per layer")
    require("data.max_refs", data.min_refs <= data.max_refs, ">= data.min_refs")
    require("data.max_refs", data.max_refs < data.num_views, "< data.num_views (keep a target)")
    low, high = data.frame_gap
    require("data.frame_gap", 0 <= low <= high, "[low, high] with 0 <= low <= high")
    beta = recipe.diffusion
    require("diffusion.beta_end", beta.beta_start < beta.beta_end, "> diffusion.beta_start")
    _check_backbone_options(recipe, source_of)
