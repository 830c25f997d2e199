"""Alignment losses and the alignment-method contract (`method`): CAMEO's loss and its
projection head, and what every registered method implements."""

from cameo_cli.alignment.cameo_loss import CameoLoss
from cameo_cli.alignment.method import (
    AlignmentInputs,
    AlignmentMethod,
    AlignmentNeeds,
    AlignmentOutput,
    build_alignment,
)

__all__ = [
    "AlignmentInputs",
    "AlignmentMethod",
    "AlignmentNeeds",
    "AlignmentOutput",
    "CameoLoss",
    "build_alignment",
]
