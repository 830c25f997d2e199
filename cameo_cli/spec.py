"""`BackboneSpec`: the light description of one backbone (no torch import), what a
registry entry point names and what an adapter class declares as its `spec`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """Light metadata of one backbone; listing backbones reads only this."""

    name: str
    description: str
    default_layer: int
    layer_paths: tuple[str, ...]  # hook locations of the full config, in layer order
    adapter: str  # "module:Class" of a `cameo_cli.backbone.MultiViewBackbone` subclass
    per_view_layers: tuple[int, ...] = ()  # layers attending within each view; others: 3D

    @property
    def default_hook(self) -> str:
        return self.layer_paths[self.default_layer]

    def load_adapter(self) -> type:
        """Import and return the adapter class, a `cameo_cli.backbone.MultiViewBackbone`
        subclass (this imports torch and diffusers)."""
        module_name, _, attr = self.adapter.partition(":")
        return getattr(importlib.import_module(module_name), attr)
