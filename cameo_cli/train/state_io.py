"""Nested state dicts (optimizer, LR scheduler) as safetensors + JSON, without pickle.

`flatten_state` walks a nested structure of dicts, lists, tuples, scalars and tensors; every
tensor goes to a flat `{key: tensor}` dict (saved with safetensors) and is replaced in the
structure by a reference `{"__tensor__": key}`; what remains is plain JSON. Tuples and
dicts with non-string keys are tagged so that `unflatten_state` restores them exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cameo_cli.io import load_safetensors, read_json, save_safetensors, write_json

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_ITEMS = "__items__"


def flatten_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split `state` into a JSON-serialisable structure and a flat dict of tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
            return {_TENSOR: key}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {k: walk(v, f"{key}.{k}") for k, v in value.items()}
            return {_ITEMS: [[k, walk(v, f"{key}.{k}")] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {_TUPLE: [walk(v, f"{key}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot store {type(value).__name__} at '{key}' without pickle")

    return walk(state, "state"), tensors


def unflatten_state(structure: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(structure, dict):
        if set(structure) == {_TENSOR}:
            return tensors[structure[_TENSOR]]
        if set(structure) == {_TUPLE}:
            return tuple(unflatten_state(v, tensors) for v in structure[_TUPLE])
        if set(structure) == {_ITEMS}:
            return {k: unflatten_state(v, tensors) for k, v in structure[_ITEMS]}
        return {k: unflatten_state(v, tensors) for k, v in structure.items()}
    if isinstance(structure, list):
        return [unflatten_state(v, tensors) for v in structure]
    return structure


def save_state(state: Any, folder: Path, stem: str) -> None:
    """Write `state` as `<stem>.json` + `<stem>.safetensors` in `folder`."""
    structure, tensors = flatten_state(state)
    save_safetensors(tensors, folder / f"{stem}.safetensors")
    write_json(folder / f"{stem}.json", structure, indent=1)


def load_state(folder: Path, stem: str, device: str | torch.device = "cpu") -> Any:
    """Read what `save_state` wrote."""
    tensors = load_safetensors(folder / f"{stem}.safetensors", device=str(device))
    structure = read_json(folder / f"{stem}.json")
    return unflatten_state(structure, tensors)
