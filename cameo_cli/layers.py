"""The recommended supervision layer per backbone, kept in `$CAMEO_HOME/recommended_layers.json`.

`cameo diagnose` writes `{"<backbone>/<variant>": {"layer": L, ...}}` entries there (the most
precise multi-view layer it measured); `cameo train --layer auto` reads them back through
`read_recommended_layer`.
"""

from __future__ import annotations

import os
from pathlib import Path

from cameo_cli.errors import CameoError
from cameo_cli.io import read_json, write_json

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
    """Store `entry` (must hold "layer") for the backbone; other entries are kept."""
    path = cameo_home() / FILE_NAME
    data = _read(path)
    data[_key(backbone, variant)] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    return path


def read_recommended_layer(backbone: str, variant: str) -> int:
    """The layer `cameo diagnose` recommended for this backbone and variant."""
    path = cameo_home() / FILE_NAME
    entry = _read(path).get(_key(backbone, variant))
    if entry is None:
        raise CameoError(
            f"no recommended layer for '{_key(backbone, variant)}' in {path}: run cameo diagnose "
            f"first (cameo diagnose --backbone {backbone} --dataset DIR --out DIR)"
        )
    layer = entry.get("layer") if isinstance(entry, dict) else None
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise CameoError(f"{path}: entry '{_key(backbone, variant)}' has no integer 'layer'")
    return layer
