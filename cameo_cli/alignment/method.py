"""The alignment-method contract: what a method asks the training model for and returns.

A method (registered as an `AlignmentSpec` whose `method` names an `AlignmentMethod`
subclass) is the `nn.Module` holding its trainable parameters (projection heads); they are
trained, checkpointed (`alignment.safetensors`) and averaged by EMA with the backbone. It
declares its `needs` (probed layers, block outputs, point maps) and, when it has one, loads a
frozen `teacher` that the trainer runs on the clean views under `no_grad`; the teacher is
never part of the module, so it is neither trained nor checkpointed.
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from cameo_cli.attention.hooks import MatchScorer, ProbeResult
from cameo_cli.errors import CameoError
from cameo_cli.layer_selection import LayerSelection
from cameo_cli.spec import AlignmentSpec

if TYPE_CHECKING:
    from cameo_cli.backbone import MultiViewBackbone
    from cameo_cli.config import Recipe


@dataclass(frozen=True)
class AlignmentNeeds:
    """What the training model records during the one forward pass of a step."""

    probes: Mapping[int, tuple[int, int]] = field(default_factory=dict)  # layer -> token grid
    blocks: tuple[str, ...] = ()  # module paths in `backbone.model` whose outputs are kept
    geometry: bool = False  # the batch's point maps (the dataset must hold them)


@dataclass
class AlignmentInputs:
    """What a method's `forward` receives."""

    ref_mask: torch.Tensor  # [B, F] bool
    probes: dict[int, ProbeResult]
    blocks: dict[str, torch.Tensor]  # the first tensor each block returned
    point_map: torch.Tensor | None = None  # [B, F, 3, H, W]
    point_valid: torch.Tensor | None = None  # [B, F, H, W]
    teacher: Any = None  # what the method's teacher returned for the clean views


@dataclass
class AlignmentOutput:
    """`total` is added to L_denoise (weights applied); `terms` are logged (unweighted)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class AlignmentMethod(nn.Module, ABC):
    """Base class of every alignment method (built-in or plugin)."""

    spec: ClassVar[AlignmentSpec]

    @classmethod
    def resolve_options(cls, recipe: Recipe, backbone: MultiViewBackbone) -> dict[str, Any]:
        """The recipe's `alignment.options` with every value the run depends on pinned (so
        the checkpoint's recipe rebuilds the method without its teacher); default: the
        options with their defaults filled in."""
        return parse_options(cls.spec, recipe)

    @classmethod
    @abstractmethod
    def build(cls, recipe: Recipe, backbone: MultiViewBackbone) -> AlignmentMethod:
        """The method for a recipe whose layers and options are resolved (`plan_run`)."""

    @property
    @abstractmethod
    def needs(self) -> AlignmentNeeds:
        """The probes, block outputs and data this method reads."""

    def load_teacher(self, recipe: Recipe, device: torch.device) -> nn.Module | None:
        """The frozen teacher (called with the clean views `[B, F, 3, H, W]` in [-1, 1]
        under no_grad), or None. Missing weights are a CameoError."""
        return None

    def match_scorer(self, layer: int) -> MatchScorer | None:
        """What the method predicts as each query's matching key token at `layer` from a
        probe (e.g. a trained projection head's argmax), scored by validation and diagnose
        beside the attention's own; None (the default) where it predicts none."""
        return None

    @abstractmethod
    def forward(self, inputs: AlignmentInputs) -> AlignmentOutput:
        """The alignment terms of one micro-batch (fp32)."""


def parse_options(spec: AlignmentSpec, recipe: Recipe) -> dict[str, Any]:
    """`alignment.options` as the spec's parameters, defaults filled, as a plain dict (a
    CameoError for an unknown key, a wrong type, or options given to a method without)."""
    from cameo_cli.config import parse_section

    if spec.parameters is None:
        if recipe.alignment.options:
            given = sorted(recipe.alignment.options)
            raise CameoError(
                f"alignment.options: method '{spec.name}' takes no options, got {given}"
            )
        return {}
    parsed = parse_section(spec.parameters, recipe.alignment.options, "alignment.options")
    return dataclasses.asdict(parsed)


def method_class(recipe: Recipe) -> type[AlignmentMethod] | None:
    """The recipe's method class (None for `none`)."""
    from cameo_cli.registry import get_alignment_spec

    return get_alignment_spec(recipe.alignment.method).load_method()


def build_alignment(recipe: Recipe, backbone: MultiViewBackbone) -> AlignmentMethod | None:
    """The recipe's (resolved) alignment method, or None for `none`."""
    cls = method_class(recipe)
    return None if cls is None else cls.build(recipe, backbone)


def recipe_layers(recipe: Recipe) -> list[int]:
    """The resolved `alignment.layer` as a list (one number or several)."""
    return list(LayerSelection.parse(recipe.alignment.layer).numbers)


def layer_weights(recipe: Recipe, count: int) -> list[float]:
    """`alignment.weight` per layer: a list as given, one number for every layer."""
    weight = recipe.alignment.weight
    return list(weight) if isinstance(weight, list) else [weight] * count


@contextmanager
def block_outputs(model: nn.Module, paths: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output (its first tensor) of each module `paths` of `model` while inside."""
    found: dict[str, torch.Tensor] = {}
    handles = []

    def recorder(path: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            found[path] = output if isinstance(output, torch.Tensor) else output[0]

        return hook

    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise CameoError(f"the backbone has no module '{path}' to align") from None
        handles.append(module.register_forward_hook(recorder(path)))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def block_of_layer(layer_path: str) -> str:
    """The block holding a self-attention layer: its transformer block's parent when that is
    a `transformer_blocks` list (U-Nets: `up_blocks.2.attentions.0`), else the module that
    holds the attention (DiTs: `blocks.32`)."""
    parent = layer_path.rpartition(".")[0]
    match = re.fullmatch(r"(.+)\.transformer_blocks\.\d+", parent)
    return match.group(1) if match else parent


def block_grid(
    backbone: MultiViewBackbone, block: str, image_hw: tuple[int, int]
) -> tuple[int, int]:
    """The token grid of `block`: that of the first self-attention layer inside it."""
    for hook in backbone.hooks:
        if hook.path.startswith(block + "."):
            return backbone.token_grid(hook.index, image_hw)
    raise CameoError(
        f"block '{block}' of backbone '{backbone.name}' holds no self-attention layer, so its "
        "token grid is unknown; choose a block that holds one (see `cameo backbones show`)"
    )


def output_channels(module: nn.Module) -> int:
    """Channels of a block's output: those of its last linear or convolution layer."""
    channels = None
    for child in module.modules():
        if isinstance(child, nn.Linear):
            channels = child.out_features
        elif isinstance(child, nn.Conv2d):
            channels = child.out_channels
    if channels is None:
        raise CameoError(f"cannot tell the output channels of {type(module).__name__}")
    return channels


def block_tokens(
    output: torch.Tensor, batch: int, views: int, grid: tuple[int, int]
) -> torch.Tensor:
    """A block's output `[B·F, C, h, w]` (U-Nets) or `[B·F, h·w, C]` (DiTs) as tokens
    `[B, F, h·w, C]`, row-major on the (h, w) grid."""
    if output.dim() == 4:
        tokens = output.flatten(2).transpose(1, 2)
    elif output.dim() == 3:
        tokens = output
    else:
        raise ValueError(f"a block output of shape {tuple(output.shape)} is not a token grid")
    if tokens.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"the block output has {tokens.shape[1]} tokens, not {grid[0]}x{grid[1]}")
    return tokens.reshape(batch, views, tokens.shape[1], tokens.shape[2])
