"""Layer tables of a backbone, built on the meta device so full configs cost no memory."""

from __future__ import annotations

import torch

from cameo_cli.backbone import LayerInfo
from cameo_cli.config.schema import BackboneConfig
from cameo_cli.registry import backbone_from_recipe


def describe_layers(name: str, variant: str, resolution: int) -> list[LayerInfo]:
    """The self-attention layers of backbone `name` for square inputs of `resolution` px."""
    with torch.device("meta"):
        backbone = backbone_from_recipe(BackboneConfig(name=name, variant=variant))
    return backbone.layers(resolution)
