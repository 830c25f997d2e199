"""The module the optimizer trains: the backbone plus the CAMEO projection head.

Wrapping both in one `nn.Module` lets accelerate (DDP/FSDP/DeepSpeed) synchronise the
head's gradients with the backbone's, and keeps the attention probe inside one forward.
"""

from __future__ import annotations

import torch
from torch import nn

from cameo_cli.backbone import MultiViewBackbone, ViewConditioning


class CameoTrainingModel(nn.Module):
    """`forward` returns the backbone's prediction and the CAMEO term (None without it).

    With CAMEO the model turns the point maps it is given into correspondence targets on
    the token grid of `layer` (cycle-consistency threshold `epsilon` tokens, `selection`
    "joint" or "per_pair", see `cameo_cli.geometry.correspondence`).
    """

    def __init__(
        self,
        backbone: MultiViewBackbone,
        alignment: nn.Module | None,
        layer: int,
        grid: tuple[int, int] | None,
        epsilon: float,
        selection: str,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.alignment = alignment
        self.layer = layer
        self.grid = grid
        self.epsilon = epsilon
        self.selection = selection

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        cond: ViewConditioning,
        point_map: torch.Tensor | None = None,
        point_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.alignment is None:
            return self.backbone(noisy, timesteps, cond), None
        from cameo_cli.geometry import correspondence_targets

        with torch.no_grad():
            targets = correspondence_targets(
                point_map, point_valid, self.grid, self.epsilon, self.selection
            )
        with self.backbone.probe(self.layer, self.grid) as handle:
            prediction = self.backbone(noisy, timesteps, cond)
        with torch.autocast(device_type=noisy.device.type, enabled=False):
            cameo = self.alignment(handle.result, targets, cond.ref_mask)
        return prediction, cameo
