"""Recipes: YAML files read into these dataclasses (the schema every job shares).

A recipe is a YAML mapping whose keys mirror the dataclasses below; missing keys keep their
defaults, unknown keys and wrongly typed values are errors. `--set a.b=value` overrides are
type-checked against the same fields. Shipped recipes live in the `recipes/` folder that is
installed with cameo as package data.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cameo_cli import io
from cameo_cli.errors import CameoError
from cameo_cli.layer_selection import LayerSelection


@dataclass
class BackboneConfig:
    name: str = "cat3d"
    variant: str = "full"  # "tiny" (CPU tests) or "full" (the paper's shapes)
    pretrained: str | None = None  # local diffusers folder (SD2.1, Hunyuan-DiT); None = random
    qk_norm: bool = True
    gradient_checkpointing: bool = False
    camera_encoder: str | None = None  # "official" | "conv"; None = the backbone's default
    domain_embeddings: int | None = None  # zero-init domain embeddings; None = default (0)
    view_positions: str | None = None  # hunyuan-dit: "shared" | "distinct" RoPE; None = shared


@dataclass
class CodecConfig:
    kind: str = "vae"  # "vae" (AutoencoderKL), "space_to_depth" or "none" (pixel space)
    factor: int = 2  # space_to_depth: pixels per latent cell along each side
    path: str | None = None  # local AutoencoderKL folder, required for kind "vae"
    scaling_factor: float = 0.18215
    cache_latents: bool = False
    sample_posterior: bool = False  # training latents drawn from the VAE posterior (official)


@dataclass
class DataConfig:
    dataset: str | None = None  # folder written by `cameo prepare`
    resolution: int = 512
    num_views: int = 4  # F
    min_refs: int = 1
    max_refs: int = 3
    frame_gap: tuple[int, int] = (1, 64)  # frames between the first and last view of a sample
    # "official" (one reference count and order per batch), "random" (shuffle) or "even"
    # (evenly spaced references), per sample; read from `policy` in cameo 0.1.0 recipes
    order: str = "random"
    workers: int = 4
    domain: str = "others"  # the official domain switch: re10k, co3d or others
    # held-out scenes for validation: a prepared folder's `test` split; None = the `dataset`
    # folder's; "train" = the training scenes (an explicit opt-in, warned and recorded)
    validation: str | None = None


@dataclass
class DiffusionConfig:
    prediction: str = "v_prediction"  # or "epsilon"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    snr_shift: float = 1.0  # per-step SNR divided by sqrt(snr_shift); the official snr_rescale
    zero_terminal_snr: bool = False
    timestep_spacing: str = "leading"  # DDIM: "leading" (SD2.1, official) or "trailing"
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weights (Hang et al. 2023); None off


@dataclass
class AlignmentConfig:
    method: str = "cameo"  # a registered alignment method (`cameo alignments list`)
    # a LayerChoice (cameo_cli.layer_selection): None = default, "auto" = diagnose's pick
    # ("auto:2": its top 2), [10, 12] or "3,8-10" = several layers
    layer: int | list[int] | str | None = None
    weight: float | list[float] = 0.02  # lambda; CAMEO: one number, or one per layer
    epsilon: float = 1.5  # cycle-consistency threshold in token units; .inf disables the mask
    loss: str = "ce"  # "ce" or "l1"
    # "mlp" (official: H -> 4H -> GELU -> 1 over heads), "monotone" (cameo's, non-decreasing
    # in every head's logit) or "none" (head-averaged probabilities)
    head: str = "mlp"
    targets: str = "per_pair"  # "joint" (official: one target per query) or "per_pair"
    chunk_size: int | None = None  # query rows per chunk (memory bound); None: 256 GPU, 64 CPU
    options: dict[str, Any] = field(default_factory=dict)  # the method's own (its `parameters`)


@dataclass
class TrainConfig:
    steps: int = 320_000
    batch_size: int = 6  # global: split over processes; x grad_accumulation per step
    learning_rate: float = 2.5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 500
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    mixed_precision: str = "bf16"  # "no", "fp16" or "bf16"
    camera_drop: float = 0.1
    camera_drop_scope: str = "sample"  # "batch" (whole global batch at once) or "sample"
    ema: bool = False
    ema_decay: float = 0.9999
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    validate_every: int = 5000
    # experiment trackers through accelerate: any of TRACKERS; metrics.jsonl is always kept
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])


TRACKERS = ("tensorboard", "wandb", "mlflow")


@dataclass
class SampleConfig:
    scheduler: str = "ddim"  # "ddim", "dpm-solver++" or "unipc" (cameo_cli.diffusion.SAMPLERS)
    steps: int = 50
    guidance: float = 2.0
    eta: float = 0.0
    seed: int = 0


@dataclass
class EvaluateConfig:
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "lpips"])
    lpips_net: str = "vgg"
    psnr_cap: float = 100.0


@dataclass
class Recipe:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


# Allowed values of the string fields that name a choice (dotted path -> choices).
CHOICES: dict[str, tuple[str, ...]] = {
    "backbone.variant": ("tiny", "full"),
    "codec.kind": ("vae", "space_to_depth", "none"),
    "backbone.camera_encoder": ("official", "conv"),
    "data.order": ("official", "random", "even"),
    "data.domain": ("re10k", "co3d", "others"),  # official indices 0, 1, 2 (in this order)
    "diffusion.prediction": ("v_prediction", "epsilon"),
    "diffusion.timestep_spacing": ("leading", "trailing"),
    "alignment.loss": ("ce", "l1"),
    "alignment.head": ("mlp", "monotone", "none"),
    "alignment.targets": ("joint", "per_pair"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "train.camera_drop_scope": ("batch", "sample"),
    "sample.scheduler": ("ddim", "dpm-solver++", "unipc"),
}
# Keys renamed since cameo 0.1.0, still read from old files (run folders' config.yaml):
# old dotted path -> new key.
_RENAMED: dict[str, str] = {"data.policy": "order"}

# Keys of cameo 0.1.0 whose meaning moved: (path, value that still means the same, message).
# Run folders written by 0.1.0 hold the harmless value and keep loading.
_RETIRED_KEYS: dict[str, tuple[Any, str]] = {
    "diffusion.snr_rescale": (
        False,
        "was cameo 0.1.0's name for Min-SNR-gamma loss weighting, now "
        "'diffusion.min_snr_gamma: 5.0' (null = off); the official CAMEO code's snr_rescale "
        "(an SNR shift of the betas) is 'diffusion.snr_shift'",
    ),
}

_RECIPE_SUFFIXES = (".yaml", ".yml")
EXTENDS = "extends"  # a recipe's top-level key naming the recipe it changes (name or path)


class _RecipeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2 booleans: only true/false, so `no` stays a string."""


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


@dataclass
class _Source:
    """Where values come from, for error messages: a file (with key lines) or one override."""

    name: str
    lines: dict[str, int] = field(default_factory=dict)
    override_key: str | None = None

    def error(self, path: str, message: str) -> CameoError:
        if self.override_key is not None:
            prefix = self.name if path == self.override_key else f"{self.name}: {path}"
            return CameoError(f"{prefix}: {message}")
        line = self.lines.get(path)
        location = f"{self.name}:{line}" if line else self.name
        return CameoError(f"{location}: {path}: {message}" if path else f"{location}: {message}")


# ---------------------------------------------------------------------------------------------
# Types: checking and converting values against the dataclass fields
# ---------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if _is_union(tp):
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return "a mapping"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} {' '.join(dict.fromkeys(_type_name(a) for a in args))}"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"bool {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return f"a list {list(value)!r}"
    return f"{type(value).__name__} {value!r}"


def _convert(value: Any, tp: Any, path: str, source: _Source) -> Any:
    """Return `value` as type `tp` (dataclasses built recursively) or raise a CameoError."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise source.error(path, f"expected a mapping, got {_describe(value)}")
        return _build(tp, value, path, source)
    if _is_union(tp):
        members = typing.get_args(tp)
        if value is None:
            if type(None) in members:
                return None
            raise source.error(path, f"expected {_type_name(tp)}, got null")
        for member in members:
            if member is type(None):
                continue
            try:
                return _convert(value, member, path, source)
            except CameoError:
                continue
        raise source.error(path, f"expected {_type_name(tp)}, got {_describe(value)}")
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise source.error(path, f"expected a mapping, got {_describe(value)}")
        return {k: _convert(v, args[1], f"{path}.{k}", source) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list | tuple):
            raise source.error(path, f"expected {_type_name(tp)}, got {_describe(value)}")
        return [_convert(item, args[0], f"{path}[{i}]", source) for i, item in enumerate(value)]
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not isinstance(value, list | tuple) or (not variadic and len(value) != len(args)):
            raise source.error(path, f"expected {_type_name(tp)}, got {_describe(value)}")
        item_types = [args[0]] * len(value) if variadic else list(args)
        return tuple(
            _convert(item, item_tp, f"{path}[{i}]", source)
            for i, (item, item_tp) in enumerate(zip(value, item_types, strict=True))
        )
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # "inf", "1e-4" (YAML 1.1 reads these as strings)
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isnan(number):
                return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"recipe field {path} has an unsupported type {tp!r}")
    raise source.error(path, f"expected {_type_name(tp)}, got {_describe(value)}")


def _check_choice(value: Any, path: str, source: _Source) -> None:
    choices = CHOICES.get(path)
    if choices is not None and isinstance(value, str) and value not in choices:
        raise source.error(path, f"expected one of {', '.join(choices)}, got {value!r}")


def _unknown_key(path: str, valid: Sequence[str], source: _Source) -> CameoError:
    prefix, _, leaf = path.rpartition(".")
    qualified = {name: f"{prefix}.{name}" if prefix else name for name in valid}
    close = difflib.get_close_matches(leaf, list(valid), n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{qualified[close[0]]}'?"
    else:
        hint = "valid keys: " + ", ".join(qualified.values())
    location = source.name
    if source.override_key is None and source.lines.get(path):
        location = f"{source.name}:{source.lines[path]}"
    return CameoError(f"{location}: unknown key '{path}' ({hint})")


def _build(cls: type, data: dict, prefix: str, source: _Source) -> Any:
    field_types = _field_types(cls)
    values = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if path in _RETIRED_KEYS:
            harmless, message = _RETIRED_KEYS[path]
            if value is harmless:
                continue
            raise source.error(path, message)
        if path in _RENAMED:
            key = _RENAMED[path]
            if key in data:
                raise source.error(path, f"was renamed to '{prefix}.{key}'; give only that key")
            path = f"{prefix}.{key}"
        if key not in field_types:
            raise _unknown_key(path, list(field_types), source)
        values[key] = _convert(value, field_types[key], path, source)
        _check_choice(values[key], path, source)
    return cls(**values)


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


def parse_section(cls: type, data: Mapping[str, Any], path: str) -> Any:
    """`data` as the dataclass `cls` (defaults filled; unknown keys and wrong types are
    CameoErrors naming `path.key`): how a method's `alignment.options` are read."""
    return _build(cls, dict(data), path, _Source("recipe"))


# ---------------------------------------------------------------------------------------------
# Dicts and YAML text
# ---------------------------------------------------------------------------------------------


def recipe_from_dict(data: dict | None, source: str = "recipe") -> Recipe:
    """Build a Recipe from a (possibly partial) nested dict; `source` names it in errors."""
    where = _Source(source)
    recipe = _convert({} if data is None else data, Recipe, "", where)
    _validate(recipe, lambda path: where)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain nested dicts and lists (what YAML and JSON can hold)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(recipe))


class _RecipeDumper(yaml.SafeDumper):
    """Block-style mappings, one-line lists of scalars (`metrics: [psnr, ssim]`)."""


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    flat = all(not isinstance(item, dict | list) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flat)


_RecipeDumper.add_representer(list, _represent_list)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe as YAML text: sections in schema order, a blank line between them."""
    sections = [
        yaml.dump(
            {name: value},
            Dumper=_RecipeDumper,
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
        )
        for name, value in recipe_to_dict(recipe).items()
    ]
    return "\n".join(sections)


def dump_recipe(recipe: Recipe, path: str | os.PathLike, comment: str | None = None) -> None:
    """Write the recipe as YAML to `path` atomically (a temporary file, then a rename).

    `comment` (one or more lines) is written first as `# ` lines, e.g. what resolved it.
    """
    path = Path(path)
    header = "".join(f"# {line}".rstrip() + "\n" for line in (comment or "").splitlines())
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_text(path, header + ("\n" if header else "") + recipe_to_yaml(recipe))


def _key_lines(node: yaml.Node | None, name: str, prefix: str = "") -> dict[str, int]:
    """Map each dotted key of a composed YAML document to its line; reject duplicate keys."""
    lines: dict[str, int] = {}
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key_node, value_node in node.value:
        key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in lines:
            raise CameoError(f"{name}:{line}: duplicate key '{key}' (first on line {lines[key]})")
        lines[key] = line
        lines.update(_key_lines(value_node, name, key))
    return lines


def _parse_yaml_file(path: Path) -> tuple[Any, dict[str, int]]:
    data, node = io.read_yaml(path, "recipe file", loader=_RecipeLoader)
    lines = _key_lines(node, str(path))
    if data is not None and not isinstance(data, dict):
        raise CameoError(f"{path}: a recipe must be a YAML mapping, got {_describe(data)}")
    return data, lines


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------


def _field_at(path: str, source: _Source) -> Any:
    """The type of the field at dotted `path` (unknown and retired keys are errors)."""
    if path in _RETIRED_KEYS:
        raise source.error(path, _RETIRED_KEYS[path][1])
    if path in _RENAMED:
        new_path = f"{path.rpartition('.')[0]}.{_RENAMED[path]}"
        raise source.error(path, f"was renamed to '{new_path}'")
    tp: Any = Recipe
    walked: list[str] = []
    for part in path.split("."):
        walked.append(part)
        if typing.get_origin(tp) is dict:  # a key of a free mapping (alignment.options)
            tp = typing.get_args(tp)[1]
            continue
        if not dataclasses.is_dataclass(tp):
            raise source.error(".".join(walked[:-1]), f"is {_type_name(tp)}, it has no keys")
        field_types = _field_types(tp)
        if part not in field_types:
            raise _unknown_key(".".join(walked), list(field_types), source)
        tp = field_types[part]
    return tp


def _accepts(tp: Any, kind: type) -> bool:
    members = typing.get_args(tp) if _is_union(tp) else (tp,)
    return any(m is kind or typing.get_origin(m) is kind for m in members)


def _merged(data: dict, path: list[str], update: dict) -> dict:
    """The section of `data` at `path` with `update` merged in, recursively."""
    section = data
    for part in path:
        section = section[part]
    result = dict(section)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            value = _merged(result, [key], value)
        result[key] = value
    return result


def apply_override(recipe: Recipe, override: str) -> Recipe:
    """A copy of `recipe` with one `a.b=value` override applied (value parsed as YAML)."""
    key, sep, text = override.partition("=")
    key = key.strip()
    source = _Source(f"--set {override}", override_key=key)
    if not sep or not key:
        raise CameoError(f"--set {override}: expected KEY=VALUE, for example alignment.weight=0.05")
    tp = _field_at(key, source)
    try:
        value = yaml.load(text, Loader=_RecipeLoader) if text.strip() else ""
        if isinstance(value, str) and "," in value and (_accepts(tp, list) or _accepts(tp, tuple)):
            value = [yaml.load(part, Loader=_RecipeLoader) for part in value.split(",")]
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CameoError(f"--set {override}: malformed YAML value: {problem}") from None
    if _accepts(tp, str) and isinstance(value, int | float) and not _accepts(tp, int):
        value = text.strip()  # a name or path that YAML read as a number: keep the text
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):  # merge into the section
        value = _merged(recipe_to_dict(recipe), key.split("."), value)
    return _with_value(recipe, key, value, source)


def _with_value(recipe: Recipe, key: str, value: Any, source: _Source) -> Recipe:
    """A copy of `recipe` with the field `key` set to `value` (type-checked, not parsed)."""
    tp = _field_at(key, source)
    converted = _convert(value, tp, key, source)
    _check_choice(converted, key, source)
    updated = copy.deepcopy(recipe)
    *parents, last = key.split(".")
    target: Any = updated
    for part in parents:
        target = target.setdefault(part, {}) if isinstance(target, dict) else getattr(target, part)
    if isinstance(target, dict):
        target[last] = converted
    else:
        setattr(target, last, converted)
    return updated


# ---------------------------------------------------------------------------------------------
# Shipped recipes and loading
# ---------------------------------------------------------------------------------------------


def _recipe_folders() -> list[Path]:
    """The installed `cameo.recipes` folders (the repository's `recipes/`, a namespace package:
    no `__init__.py`)."""
    try:
        spec = importlib.util.find_spec("cameo.recipes")
    except (ImportError, ValueError):
        return []
    locations = spec.submodule_search_locations if spec is not None else None
    # Editable installs add a placeholder entry that is not a folder; skip it.
    return [Path(location) for location in locations or () if Path(location).is_dir()]


def _shipped_recipes() -> dict[str, Path]:
    """Name -> file of every shipped recipe (the first folder wins for a repeated name)."""
    found: dict[str, Path] = {}
    for folder in _recipe_folders():
        for path in sorted(folder.iterdir()):
            if path.suffix in _RECIPE_SUFFIXES and path.is_file():
                found.setdefault(path.stem, path)
    return found


def _description(path: Path) -> str:
    """The recipe's one-line description: its first line when that is a `# ` comment."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return first.lstrip("#").strip() if first.startswith("#") else ""


def list_recipes() -> list[tuple[str, str]]:
    """(name, one-line description) of every shipped recipe, sorted by name."""
    return [(name, _description(path)) for name, path in sorted(_shipped_recipes().items())]


def find_recipe(name: str) -> Path:
    """The file of the shipped recipe `name` (with or without its .yaml suffix)."""
    shipped = _shipped_recipes()
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix in _RECIPE_SUFFIXES else name
    if stem in shipped:
        return shipped[stem]
    close = difflib.get_close_matches(stem, list(shipped), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    known = ", ".join(sorted(shipped)) if shipped else "none installed"
    raise CameoError(
        f"unknown recipe '{name}'{hint}; known recipes: {known}; or give a path to a YAML file"
    )


def _resolve(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: an existing path, else a shipped recipe by name (or `recipes/NAME.yaml`)."""
    path, text = Path(name_or_path), str(name_or_path)
    if path.is_file():
        return path
    looks_like_path = path.suffix in _RECIPE_SUFFIXES or os.sep in text or "/" in text
    if not looks_like_path:
        return find_recipe(text)
    shipped = _shipped_recipes()
    if path.parent in (Path("."), Path("recipes")) and path.stem in shipped:
        return shipped[path.stem]  # `--recipe recipes/cat3d-re10k.yaml` outside a checkout
    return path


def _recipe_data(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[str, int]]:
    """The mapping of the recipe file `path` with its `extends:` parents merged beneath it
    (the file's own values win, section by section), and the file's key lines."""
    data, lines = _parse_yaml_file(path)
    data = {} if data is None else dict(data)
    if EXTENDS not in data:
        return data, lines
    parent_name = data.pop(EXTENDS)
    where = f"{path}:{lines[EXTENDS]}: {EXTENDS}"
    if not isinstance(parent_name, str) or not parent_name:
        raise CameoError(f"{where}: expected a recipe name or path, got {_describe(parent_name)}")
    relative = path.parent / parent_name
    parent = _resolve(relative if relative.is_file() else parent_name)
    if parent.resolve() in chain + (path.resolve(),):
        raise CameoError(f"{where}: '{parent_name}' extends this recipe again (a loop)")
    parent_data, _ = _recipe_data(parent, chain + (path.resolve(),))
    return _merged({"": parent_data}, [""], data), lines


def load_recipe(
    name_or_path: str | os.PathLike,
    overrides: Sequence[str] = (),
    values: Mapping[str, tuple[str, Any]] | None = None,
) -> Recipe:
    """Load a recipe from a YAML file or by shipped name, then apply `--set` overrides, then
    `values`: typed values of command-line flags, `{dotted key: (flag, value)}` (e.g.
    `{"alignment.layer": ("--layer", 10)}`), set as given, not parsed from text."""
    path = _resolve(name_or_path)
    data, lines = _recipe_data(path, ())
    file_source = _Source(str(path), lines)
    recipe = _convert(data, Recipe, "", file_source)
    override_sources: dict[str, _Source] = {}
    for override in overrides:
        recipe = apply_override(recipe, override)
        key = override.partition("=")[0].strip()
        override_sources[key] = _Source(f"--set {override}", override_key=key)
    for key, (flag, value) in (values or {}).items():
        source = _Source(f"{flag} {value}", override_key=key)
        recipe = _with_value(recipe, key, value, source)
        override_sources[key] = source

    def source_of(path: str) -> _Source:
        for key, source in reversed(override_sources.items()):
            if path == key or path.startswith(key + "."):
                return source
        return file_source

    _validate(recipe, source_of)
    return recipe
