"""A training run as read by inference: its checkpoint folders, its metrics file, and one
checkpoint loaded for sampling, evaluation or diagnosis.

A run folder holds `checkpoints/step-000100/` folders (written by `cameo_cli.train.checkpoint`,
which documents their layout) and `metrics.jsonl`. Nothing is pickled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cameo_cli.errors import CameoError
from cameo_cli.io import check_safetensors, load_safetensors, read_json

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
EXPORT_INDEX = "model_index.json"  # marks a folder written by `cameo export`
_STEP_FOLDER = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders in `root` (a run's `checkpoints/`), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_FOLDER.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def read_progress(folder: Path) -> dict[str, Any]:
    """`state.json` of a checkpoint: step, data position, world size."""
    return read_json(folder / "state.json", "checkpoint progress file")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder's latest checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CameoError(f"{path}: no such run or checkpoint folder")
    if (path / "state.json").is_file() and (path / "backbone").is_dir():
        return path
    folders = list_checkpoints(path / CHECKPOINTS)
    if not folders:
        raise CameoError(f"{path}: neither a checkpoint folder nor a run folder with checkpoints")
    return folders[-1]


@dataclass
class LoadedModel:
    """A trained model ready for sampling, evaluation or diagnosis."""

    recipe: Any  # cameo_cli.config.Recipe
    backbone: nn.Module  # MultiViewBackbone, eval mode
    alignment: nn.Module | None  # the trained AlignmentMethod, or None (--align none)
    step: int


def load_for_inference(
    path: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True
) -> LoadedModel:
    """Load a run folder (latest checkpoint), a checkpoint folder or an export.

    With `use_ema` and an `ema.safetensors` present, the averaged weights are used. An
    export's relative `codec.path` is its own `codec/` folder.
    """
    from cameo_cli.alignment import build_alignment
    from cameo_cli.config import load_recipe
    from cameo_cli.registry import load_backbone

    folder = resolve_checkpoint(path)
    recipe = load_recipe(str(folder / "config.yaml"))
    if (folder / EXPORT_INDEX).is_file() and recipe.codec.path is not None:
        recipe.codec.path = str(folder / recipe.codec.path)
    backbone = load_backbone(folder / "backbone")
    alignment, prefix = None, ""
    head_file = folder / "alignment.safetensors"
    if head_file.is_file():
        alignment = build_alignment(recipe, backbone)
    if alignment is not None:
        prefix = _cameo_010_prefix(check_safetensors(head_file))
        alignment.load_state_dict({prefix + k: v for k, v in load_safetensors(head_file).items()})
    ema_file = folder / "ema.safetensors"
    if use_ema and ema_file.is_file():
        shadow = {
            f"alignment.{prefix}{k[len('alignment.') :]}" if k.startswith("alignment.") else k: v
            for k, v in load_safetensors(ema_file).items()
        }
        _apply_ema(shadow, backbone, alignment)
    backbone.to(device).eval()
    if alignment is not None:
        alignment.to(device).eval()
    return LoadedModel(recipe, backbone, alignment, read_progress(folder)["step"])


def _cameo_010_prefix(metadata: dict[str, str]) -> str:
    """cameo 0.1.0 saved one CAMEO head without the method's `losses.<layer>.` prefix (its
    metadata names the layer, not the method): the prefix to add, else ""."""
    if "method" in metadata or "layer" not in metadata:
        return ""
    return f"losses.{metadata['layer']}."


@torch.no_grad()
def _apply_ema(
    shadow: dict[str, torch.Tensor], backbone: nn.Module, alignment: nn.Module | None
) -> None:
    for prefix, module in (("backbone.", backbone), ("alignment.", alignment)):
        if module is None:
            continue
        for name, param in module.named_parameters():
            if prefix + name in shadow:
                param.copy_(shadow[prefix + name].to(param.dtype))
