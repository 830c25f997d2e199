"""Backbone registry: discovery through the `cameo.backbones` entry-point group.

An entry point names a `BackboneSpec`, a light object (no torch import) that describes the
backbone and names its adapter class as "module:Class"; the adapter module is imported
only when that backbone is built.
"""

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

    @property
    def default_hook(self) -> str:
        return self.layer_paths[self.default_layer]

    def load_adapter(self) -> type:
        """Import and return the adapter class (this imports torch and diffusers)."""
        module_name, _, attr = self.adapter.partition(":")
        return getattr(importlib.import_module(module_name), attr)
