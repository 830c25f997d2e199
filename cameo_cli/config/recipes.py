"""Recipes by name or path: shipped-recipe discovery, `extends:` chains, `--set` overrides
and command-line values, then the cross-field rules.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cameo_cli.config.convert import (
    _MOVED_TO_OPTIONS,
    _RENAMED,
    _RETIRED_KEYS,
    _check_choice,
    _convert,
    _describe,
    _field_types,
    _is_union,
    _parse_yaml_file,
    _RecipeLoader,
    _Source,
    _type_name,
    _unknown_key,
    recipe_to_dict,
)
from cameo_cli.config.rules import _validate
from cameo_cli.config.schema import Recipe
from cameo_cli.errors import CameoError

_RECIPE_SUFFIXES = (".yaml", ".yml")
EXTENDS = "extends"  # a recipe's top-level key naming the recipe it changes (name or path)


def recipe_from_dict(data: dict | None, source: str = "recipe") -> Recipe:
    """Build a Recipe from a (possibly partial) nested dict; `source` names it in errors."""
    where = _Source(source)
    recipe = _convert({} if data is None else data, Recipe, "", where)
    _validate(recipe, lambda path: where)
    return recipe


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
    if path in _MOVED_TO_OPTIONS:
        prefix, _, key = path.rpartition(".")
        raise source.error(path, f"moved to '{prefix}.options.{key}'")
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
