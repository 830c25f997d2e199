"""Light descriptions (no torch import) of what the registries hold: `BackboneSpec` (one
backbone, named by an adapter's `spec`) and `AlignmentSpec` (one alignment method)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneOptions:
    """The options every adapter's `build` accepts (a recipe's `backbone.options`; the
    recipe's own `backbone.qk_norm` sets `qk_norm`). An adapter with more subclasses this and
    names the subclass as its spec's `parameters`."""

    qk_norm: bool = True  # LayerNorm on q and k of every hooked layer
    downsample: int | None = None  # image pixels per latent cell; None: from the codec


@dataclass(frozen=True)
class BackboneSpec:
    """Light metadata of one backbone; listing backbones and checking a recipe's
    `backbone.options` (against `parameters`) read only this.

    The adapter hooks exactly `layer_paths` (those its model has, for a smaller config), in
    that order, attending within each view on `per_view_layers` and across views elsewhere
    (`MultiViewBackbone.spec_hooks`): the paths are written here only.
    """

    name: str
    description: str
    default_layer: int
    layer_paths: tuple[str, ...]  # hook locations of the full config, in layer order
    adapter: str  # "module:Class" of a `cameo_cli.backbone.MultiViewBackbone` subclass
    per_view_layers: tuple[int, ...] = ()  # layers attending within each view; others: 3D
    parameters: type = BackboneOptions  # the options dataclass (a `BackboneOptions` subclass)
    # module paths in the model of its repeated blocks, each sharded on its own under
    # `train.sharding: fsdp` (a ModuleList: each child); empty: the backbone cannot shard
    blocks: tuple[str, ...] = ()

    @property
    def default_hook(self) -> str:
        return self.layer_paths[self.default_layer]

    def load_adapter(self) -> type:
        """Import and return the adapter class, a `cameo_cli.backbone.MultiViewBackbone`
        subclass (this imports torch and diffusers)."""
        module_name, _, attr = self.adapter.partition(":")
        return getattr(importlib.import_module(module_name), attr)


# What an alignment method can ask the training model for (`AlignmentSpec.needs`).
NEEDS = ("probe", "hidden_state", "teacher", "geometry")


@dataclass(frozen=True)
class AlignmentSpec:
    """Light metadata of one alignment method; listing methods reads only this.

    `needs` says what the method consumes: "probe" (q/k of the supervised layers),
    "hidden_state" (the output of a block), "teacher" (features of a frozen teacher on the
    clean views), "geometry" (the dataset's point maps). `parameters` is the dataclass of
    the method's own options (the recipe's `alignment.options`), None when it has none.
    """

    name: str
    description: str
    method: str | None  # "module:Class" of a `cameo_cli.alignment.AlignmentMethod`; None: no term
    needs: tuple[str, ...] = ()
    parameters: type | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.needs) - set(NEEDS))
        if unknown:
            raise ValueError(f"alignment '{self.name}': unknown needs {unknown} (known: {NEEDS})")

    def load_method(self) -> type | None:
        """Import and return the method class (this imports torch); None for no term."""
        if self.method is None:
            return None
        module_name, _, attr = self.method.partition(":")
        return getattr(importlib.import_module(module_name), attr)
