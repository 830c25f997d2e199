"""Checkpoints written and read: staged and renamed, so a crash never leaves half of one.

Layout of `RUN/checkpoints/step-000100/` (names in `cameo_cli.run_folder.layout`):

    backbone/                      `MultiViewBackbone.save_pretrained` (diffusers, safetensors)
    alignment.safetensors          the alignment method's parameters (absent for `--align none`)
    config.yaml                    the resolved recipe of the run
    optimizer.{json,safetensors}   AdamW state (tensors in safetensors, the rest in JSON)
    scheduler.json                 LR scheduler state
    ema.safetensors                EMA shadow weights (when EMA is on)
    rng-rank{r}.{json,safetensors} every process's RNG states
    state.json                     step, data position, world size

Nothing is pickled. An export (`cameo export`) holds the inference part, which
`load_for_inference` reads from a run, a checkpoint or an export alike.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from cameo_cli.errors import CameoError
from cameo_cli.files import (
    check_safetensors,
    iter_safetensors,
    load_safetensors,
    read_json,
    replace_folder,
    save_gathered_safetensors,
    save_safetensors,
    write_json,
)
from cameo_cli.run_folder.layout import (
    ALIGNMENT,
    BACKBONE,
    CONFIG,
    EMA,
    EXPORT_INDEX,
    PROGRESS,
    checkpoint_name,
    list_checkpoints,
    resolve_checkpoint,
)
from cameo_cli.run_folder.state import capture_rng_state, load_state, restore_rng_state, save_state

_STAGING_PREFIX = ".staging-"


class TensorState(Protocol):
    """What a checkpoint saves of the EMA (`train.ema.ExponentialMovingAverage`)."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class CheckpointManager:
    """The `checkpoints/` folder of a run: list, stage, commit and prune checkpoints."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = Path(root)
        self.keep = keep

    def folders(self) -> list[Path]:
        """Complete checkpoints, oldest first (staging folders are never listed)."""
        return list_checkpoints(self.root)

    def latest(self) -> Path | None:
        folders = self.folders()
        return folders[-1] if folders else None

    def staging_path(self, step: int) -> Path:
        return self.root / f"{_STAGING_PREFIX}{checkpoint_name(step)}"

    def stage(self, step: int) -> Path:
        """A fresh, empty staging folder for `step` (leftovers of a killed write are removed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for child in self.root.iterdir():
            if child.name.startswith(_STAGING_PREFIX):
                shutil.rmtree(child)
        folder = self.staging_path(step)
        folder.mkdir()
        return folder

    def commit(self, step: int) -> Path:
        """Rename the staging folder of `step` into place, then keep only the last `keep`."""
        staged = self.staging_path(step)
        final = self.root / checkpoint_name(step)
        replace_folder(staged, final)
        for old in self.folders()[: -self.keep] if self.keep > 0 else []:
            shutil.rmtree(old)
        return final


# -- writing ------------------------------------------------------------------------------
def save_model(
    folder: Path,
    backbone: nn.Module,
    alignment: nn.Module | None,
    method: str,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """The parts inference needs: the backbone folder and the alignment method's parameters
    (its layers and options are in the checkpoint's config.yaml). `weights`: the training
    model's full state dict (`backbone.*`, `alignment.*`) gathered from its shards; None:
    the modules' own."""
    if weights is None:
        weights = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
        if alignment is not None:
            weights.update({f"alignment.{k}": v for k, v in alignment.state_dict().items()})
    backbone.save_pretrained(folder / BACKBONE, _part(weights, "backbone."))
    if alignment is not None:
        tensors = {
            k: v.detach().cpu().contiguous() for k, v in _part(weights, "alignment.").items()
        }
        save_safetensors(tensors, folder / ALIGNMENT, metadata={"method": method})


def _part(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def save_training_state(
    folder: Path,
    *,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: TensorState | None,
    step: int,
    data_position: dict[str, int],
    world_size: int,
    write: bool = True,
) -> None:
    """Optimizer, LR scheduler, EMA and progress counters, written by the process with
    `write`. Sharded (FSDP) state is gathered tensor by tensor, so every process calls this
    and none holds the whole optimizer state at once; the files are full-state either way."""
    save_state(optimizer.state_dict(), folder, "optimizer", write=write)
    if ema is not None:
        save_gathered_safetensors(ema.state_dict(), folder / EMA, write=write)
    if not write:
        return
    write_json(folder / "scheduler.json", lr_scheduler.state_dict())
    write_json(
        folder / PROGRESS,
        {"step": step, "data_position": data_position, "world_size": world_size},
    )


def save_rng(folder: Path, rank: int, generators: dict[str, torch.Generator]) -> None:
    """This process's RNG states (every rank writes its own)."""
    save_state(capture_rng_state(generators), folder, f"rng-rank{rank}")


# -- reading ------------------------------------------------------------------------------
def read_progress(folder: Path) -> dict[str, Any]:
    """`state.json` of a checkpoint: step, data position, world size."""
    return read_json(folder / PROGRESS, "checkpoint progress file")


def restore_training_state(
    folder: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: TensorState | None,
    generators: dict[str, torch.Generator],
    rank: int,
) -> dict[str, Any]:
    """Load weights, optimizer, scheduler, EMA and this rank's RNG; return `state.json`.
    The files are full-state; where the model's parameters are shards (FSDP), each process
    keeps its own shard of every tensor (any process count reads any checkpoint)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    progress = read_progress(folder)
    saved = type(model.backbone).from_pretrained(folder / BACKBONE)
    weights = {f"backbone.{k}": v for k, v in saved.state_dict().items()}
    if model.alignment is not None:
        head_file = folder / ALIGNMENT
        if not head_file.is_file():
            raise CameoError(f"{folder}: no {ALIGNMENT} (trained with --align none?)")
        weights.update({f"alignment.{k}": v for k, v in load_safetensors(head_file).items()})
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def place(key: str, tensor: torch.Tensor) -> torch.Tensor:
        # `save_state` keys the per-parameter state `state.state.<index>.<name>`
        parts = key.split(".")
        if len(parts) == 4 and parts[:2] == ["state", "state"]:
            param = params[int(parts[2])]
            if tensor.shape == param.shape:
                return placed_like(tensor, param)
        return tensor

    optimizer.load_state_dict(load_state(folder, "optimizer", place=place))
    lr_scheduler.load_state_dict(read_json(folder / "scheduler.json"))
    if ema is not None:
        ema_file = folder / EMA
        if not ema_file.is_file():
            raise CameoError(f"{folder}: no {EMA}, but this run has EMA enabled")
        shadow = ema.state_dict()
        ema.load_state_dict(
            {k: placed_like(v, shadow[k]) for k, v in iter_safetensors(ema_file) if k in shadow}
        )
    rng_stem = f"rng-rank{rank}"
    if (folder / f"{rng_stem}.json").is_file():
        restore_rng_state(load_state(folder, rng_stem), generators)
    return progress


def placed_like(full: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`full` placed as `reference` is: this process's shard of it (a copy: `full` is not
    kept) where `reference` is sharded (DTensor), else `full` itself on `reference`'s
    device."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(reference, DTensor):
        full = full.to(reference.device, reference.dtype)
        mesh, placements = reference.device_mesh, reference.placements
        return distribute_tensor(full, mesh, placements, src_data_rank=None)
    return full.to(reference.device)


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
    recipe = load_recipe(str(folder / CONFIG))
    if (folder / EXPORT_INDEX).is_file() and recipe.codec.path is not None:
        recipe.codec.path = str(folder / recipe.codec.path)
    backbone = load_backbone(folder / BACKBONE)
    alignment, prefix = None, ""
    head_file = folder / ALIGNMENT
    if head_file.is_file():
        alignment = build_alignment(recipe, backbone)
    if alignment is not None:
        prefix = _cameo_010_prefix(check_safetensors(head_file))
        alignment.load_state_dict({prefix + k: v for k, v in load_safetensors(head_file).items()})
    ema_file = folder / EMA
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
def copy_parameters(values: dict[str, torch.Tensor], module: nn.Module, prefix: str = "") -> None:
    """Overwrite `module`'s parameters named `prefix + name` in `values` (the EMA weights of a
    checkpoint, or of a training run); the others stay as they are."""
    for name, param in module.named_parameters():
        if prefix + name in values:
            param.copy_(values[prefix + name].to(param.dtype))


def _apply_ema(
    shadow: dict[str, torch.Tensor], backbone: nn.Module, alignment: nn.Module | None
) -> None:
    copy_parameters(shadow, backbone, "backbone.")
    if alignment is not None:
        copy_parameters(shadow, alignment, "alignment.")
