"""YAML to the schema's dataclasses and back: type-checked conversion (errors name the file,
line and dotted key), keys renamed or retired since cameo 0.1.0, recipe YAML text.
"""

from __future__ import annotations

import dataclasses
import difflib
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

from cameo_cli import files
from cameo_cli.config.schema import CHOICES, Recipe
from cameo_cli.errors import CameoError

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


# Backbone-specific keys of `backbone:` before they moved into `backbone.options`; old
# recipes and run folders' config.yaml (null: the backbone's default) still load.
_MOVED_TO_OPTIONS = (
    "backbone.camera_encoder",
    "backbone.domain_embeddings",
    "backbone.view_positions",
)


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


def _check_choice(value: Any, path: str, source: _Source, choices: Any = None) -> None:
    """`value` must be one of `CHOICES[path]` or else of `choices` (a field's metadata)."""
    choices = CHOICES.get(path, choices)
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


def _moved_into_options(data: dict, prefix: str, source: _Source) -> dict:
    """`data` with the keys of `_MOVED_TO_OPTIONS` moved into its `options` (null dropped)."""
    moved = [key for key in data if f"{prefix}.{key}" in _MOVED_TO_OPTIONS]
    if not moved:
        return data
    options = dict(data.get("options") or {})
    for key in moved:
        old, new = f"{prefix}.{key}", f"{prefix}.options.{key}"
        if key in options:
            raise source.error(old, f"moved to '{new}'; give only that key")
        if data[key] is not None:
            options[key] = data[key]
            if old in source.lines:
                source.lines.setdefault(new, source.lines[old])
    return {**{k: v for k, v in data.items() if k not in moved}, "options": options}


def _build(cls: type, data: dict, prefix: str, source: _Source) -> Any:
    field_types = _field_types(cls)
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(cls)}
    data = _moved_into_options(data, prefix, source)
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
        _check_choice(values[key], path, source, choices[key])
    return cls(**values)


def parse_section(cls: type, data: Mapping[str, Any], path: str) -> Any:
    """`data` as the dataclass `cls` (defaults filled; unknown keys and wrong types are
    CameoErrors naming `path.key`): how a method's `alignment.options` are read."""
    return _build(cls, dict(data), path, _Source("recipe"))


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
    files.write_text(path, header + ("\n" if header else "") + recipe_to_yaml(recipe))


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
    data, node = files.read_yaml(path, "recipe file", loader=_RecipeLoader)
    lines = _key_lines(node, str(path))
    if data is not None and not isinstance(data, dict):
        raise CameoError(f"{path}: a recipe must be a YAML mapping, got {_describe(data)}")
    return data, lines
