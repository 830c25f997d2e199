"""The alignment-method contract (`method`): what every registered method implements and
offers the jobs. The methods themselves, CAMEO's loss included, live in their plugins."""

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
    "build_alignment",
]
