"""The module the optimizer trains: the backbone plus the alignment method's parameters.

Wrapping both in one `nn.Module` lets accelerate (DDP/FSDP/DeepSpeed) synchronise the
heads' gradients with the backbone's, and keeps what the method reads (attention probes,
block outputs) inside one forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cameo_cli.alignment.method import (
    AlignmentInputs,
    AlignmentMethod,
    AlignmentOutput,
    block_outputs,
)
from cameo_cli.backbone import MultiViewBackbone, ViewConditioning
from cameo_cli.probed import probing


class CameoTrainingModel(nn.Module):
    """`forward` returns the backbone's prediction and the alignment's output (None for
    `--align none`). The method's `needs` say which layers are probed and which block
    outputs are kept, all during the one forward pass of the backbone."""

    def __init__(self, backbone: MultiViewBackbone, alignment: AlignmentMethod | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.alignment = alignment

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        cond: ViewConditioning,
        *,
        point_map: torch.Tensor | None = None,
        point_valid: torch.Tensor | None = None,
        teacher: Any = None,
    ) -> tuple[torch.Tensor, AlignmentOutput | None]:
        if self.alignment is None:
            return self.backbone(noisy, timesteps, cond), None
        needs = self.alignment.needs
        with (
            probing(self.backbone, needs.probes) as probes,
            block_outputs(self.backbone.model, needs.blocks) as blocks,
        ):
            prediction = self.backbone(noisy, timesteps, cond)
        inputs = AlignmentInputs(
            ref_mask=cond.ref_mask,
            probes=probes,
            blocks=blocks,
            point_map=point_map,
            point_valid=point_valid,
            teacher=teacher,
        )
        return prediction, self.alignment(inputs)
