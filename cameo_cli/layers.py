"""The recommended supervision layer per backbone, kept in `$CAMEO_HOME/recommended_layers.json`.

`cameo diagnose` writes `{"<backbone>/<variant>": {"layer": L, "top": [{"layer": L, ...}, ...],
...}}` entries there (the multi-view layer it measured most precise above chance, and its
`--top-k` best ones by that lift, best first, each with precision, chance and lift);
`cameo train --layer auto` (or `auto:K`) reads them back through `read_recommended_layers`.
Entries written before `top` existed hold one layer.
"""

from __future__ import annotations

import os
from pathlib import Path

from cameo_cli.errors import CameoError
from cameo_cli.files import read_json, write_json

FILE_NAME = "recommended_layers.json"


def cameo_home() -> Path:
    """`$CAMEO_HOME`, by default `~/.cache/cameo`."""
    return Path(os.environ.get("CAMEO_HOME") or Path.home() / ".cache" / "cameo")


def _key(backbone: str, variant: str) -> str:
    return f"{backbone}/{variant}"


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise CameoError(f"{path}: expected a JSON object of '<backbone>/<variant>' entries")
    return data


def write_recommended_layer(backbone: str, variant: str, entry: dict) -> Path:
    """Store `entry` (must hold "layer"; "top" for several) for the backbone; other entries
    are kept."""
    path = cameo_home() / FILE_NAME
    data = _read(path)
    data[_key(backbone, variant)] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    return path


def read_recommended_layers(backbone: str, variant: str, count: int = 1) -> list[int]:
    """The `count` layers `cameo diagnose` recommended for this backbone and variant (most
    precise above chance), best first."""
    path = cameo_home() / FILE_NAME
    key = _key(backbone, variant)
    entry = _read(path).get(key)
    if entry is None:
        raise CameoError(
            f"no recommended layer for '{key}' in {path}: run cameo diagnose first "
            f"(cameo diagnose --backbone {backbone} --dataset DIR --out DIR --top-k {count})"
        )
    top = entry.get("top", [entry]) if isinstance(entry, dict) else []
    layers = [item.get("layer") if isinstance(item, dict) else None for item in top]
    if not layers or not all(isinstance(n, int) and not isinstance(n, bool) for n in layers):
        raise CameoError(f"{path}: entry '{key}' has no integer 'layer'")
    if len(layers) < count:
        raise CameoError(
            f"{path}: entry '{key}' holds {len(layers)} recommended layer(s), not {count}: "
            f"rerun cameo diagnose with --top-k {count}"
        )
    return layers[:count]
