"""Exponential moving average of a model's trainable parameters (kept in float32)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from cameo_cli.run_folder.checkpoints import copy_parameters


class ExponentialMovingAverage:
    """Shadow copies `ema = decay·ema + (1 - decay)·param`, keyed by parameter name."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().float().clone()
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights towards the model's current parameters."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the averaged ones."""
        copy_parameters(self.shadow, model)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The averaged weights in `model` inside the block, the trained ones back after it
        (validation scores what a checkpoint loads for inference)."""
        trained = {
            name: p.detach().clone() for name, p in model.named_parameters() if name in self.shadow
        }
        self.copy_to(model)
        try:
            yield
        finally:
            copy_parameters(trained, model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[0]}")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])
