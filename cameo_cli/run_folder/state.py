"""Training state without pickle: nested state dicts (optimizer, LR scheduler) and RNG
states as safetensors + JSON, for exact resume.

`flatten_state` walks a nested structure of dicts, lists, tuples, scalars and tensors; every
tensor goes to a flat `{key: tensor}` dict (saved with safetensors, each tensor gathered whole
when it is sharded over processes) and is replaced in the
structure by a reference `{"__tensor__": key}`; what remains is plain JSON. Tuples and
dicts with non-string keys are tagged so that `unflatten_state` restores them exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cameo_cli.files import iter_safetensors, read_json, save_gathered_safetensors, write_json

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_ITEMS = "__items__"


def flatten_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split `state` into a JSON-serialisable structure and a flat dict of tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach()
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


def save_state(state: Any, folder: Path, stem: str, *, write: bool = True) -> None:
    """Write `state` as `<stem>.json` + `<stem>.safetensors` in `folder`. Where its tensors
    are shards (DTensor), every process calls this and only the one with `write` writes."""
    structure, tensors = flatten_state(state)
    save_gathered_safetensors(tensors, folder / f"{stem}.safetensors", write=write)
    if write:
        write_json(folder / f"{stem}.json", structure, indent=1)


def load_state(
    folder: Path,
    stem: str,
    device: str | torch.device = "cpu",
    place: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> Any:
    """Read what `save_state` wrote. `place(key, tensor)` turns each tensor, as soon as it is
    read, into what the state keeps (e.g. this process's shard of it), so only one whole
    tensor is in memory at a time."""
    structure = read_json(folder / f"{stem}.json")
    tensors = {
        key: tensor if place is None else place(key, tensor)
        for key, tensor in iter_safetensors(folder / f"{stem}.safetensors", device=str(device))
    }
    return unflatten_state(structure, tensors)


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Python, NumPy, torch CPU/CUDA global states and the given named generators.

    Torch states are uint8 tensors; Python's and NumPy's are JSON-compatible lists.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(
    state: dict[str, Any], generators: dict[str, torch.Generator] | None = None
) -> None:
    """Put back what `capture_rng_state` returned (also after a JSON/safetensors round trip)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            np.asarray(npy["keys"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch_cpu"].cpu())
    cuda_states = state.get("torch_cuda") or []
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
    for name, generator in (generators or {}).items():
        generator.set_state(state["generators"][name].cpu())
