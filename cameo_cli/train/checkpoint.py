"""Checkpoints: written to a staging folder and renamed, so a crash never leaves half of one.

Layout of `RUN/checkpoints/step-000100/`:

    backbone/                      `MultiViewBackbone.save_pretrained` (diffusers, safetensors)
    alignment.safetensors          the alignment method's heads (absent for `--align none`)
    config.yaml                    the resolved recipe of the run
    optimizer.{json,safetensors}   AdamW state (tensors in safetensors, the rest in JSON)
    scheduler.json                 LR scheduler state
    ema.safetensors                EMA shadow weights (when EMA is on)
    rng-rank{r}.{json,safetensors} every process's RNG states
    state.json                     step, data position, world size

Nothing is pickled. Reading a checkpoint for inference (`load_for_inference`) and finding
one (`resolve_checkpoint`) live in the shared `cameo_cli.checkpoints`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cameo_cli.checkpoints import CHECKPOINTS as CHECKPOINTS  # the trainer's path to it
from cameo_cli.checkpoints import checkpoint_name, list_checkpoints, read_progress
from cameo_cli.errors import CameoError
from cameo_cli.io import (
    load_safetensors,
    read_json,
    replace_folder,
    save_safetensors,
    write_json,
)
from cameo_cli.train.ema import ExponentialMovingAverage
from cameo_cli.train.rng import capture_rng_state, restore_rng_state
from cameo_cli.train.state_io import load_state, save_state

_STAGING_PREFIX = ".staging-"


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
def save_model(folder: Path, backbone: nn.Module, alignment: nn.Module | None, method: str) -> None:
    """The parts inference needs: the backbone folder and the alignment method's parameters
    (its layers and options are in the checkpoint's config.yaml)."""
    backbone.save_pretrained(folder / "backbone")
    if alignment is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in alignment.state_dict().items()}
        save_safetensors(tensors, folder / "alignment.safetensors", metadata={"method": method})


def save_training_state(
    folder: Path,
    *,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: ExponentialMovingAverage | None,
    step: int,
    data_position: dict[str, int],
    world_size: int,
) -> None:
    """Optimizer, LR scheduler, EMA and progress counters (written by the main process)."""
    save_state(optimizer.state_dict(), folder, "optimizer")
    write_json(folder / "scheduler.json", lr_scheduler.state_dict())
    if ema is not None:
        save_safetensors(ema.state_dict(), folder / "ema.safetensors")
    write_json(
        folder / "state.json",
        {"step": step, "data_position": data_position, "world_size": world_size},
    )


def save_rng(folder: Path, rank: int, generators: dict[str, torch.Generator]) -> None:
    """This process's RNG states (every rank writes its own)."""
    save_state(capture_rng_state(generators), folder, f"rng-rank{rank}")


# -- reading ------------------------------------------------------------------------------
def restore_training_state(
    folder: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: ExponentialMovingAverage | None,
    generators: dict[str, torch.Generator],
    rank: int,
) -> dict[str, Any]:
    """Load weights, optimizer, scheduler, EMA and this rank's RNG; return `state.json`."""
    progress = read_progress(folder)
    backbone = model.backbone
    saved = type(backbone).from_pretrained(folder / "backbone")
    backbone.load_state_dict(saved.state_dict())
    if model.alignment is not None:
        head_file = folder / "alignment.safetensors"
        if not head_file.is_file():
            raise CameoError(f"{folder}: no alignment.safetensors (trained with --align none?)")
        model.alignment.load_state_dict(load_safetensors(head_file))
    device = next(model.parameters()).device
    optimizer.load_state_dict(load_state(folder, "optimizer", device=device))
    lr_scheduler.load_state_dict(read_json(folder / "scheduler.json"))
    if ema is not None:
        ema_file = folder / "ema.safetensors"
        if not ema_file.is_file():
            raise CameoError(f"{folder}: no ema.safetensors, but this run has EMA enabled")
        ema.load_state_dict(load_safetensors(ema_file, device=str(device)))
    rng_stem = f"rng-rank{rank}"
    if (folder / f"{rng_stem}.json").is_file():
        restore_rng_state(load_state(folder, rng_stem), generators)
    return progress
