"""CAMEO as an alignment method: one `CameoLoss` (and projection head) per supervised layer.

The whole method lives in this package: the method (here), its loss and projection head
(`loss`) and the loss's fused Triton kernels (`fused`).

`alignment.layer` is one layer or several (`[10, 12]`); every layer is probed in the same
forward pass, and the term added to L_denoise is `sum_l weight_l * L_cameo(l)` with
`alignment.weight` one number for all layers or one per layer. Correspondence targets are
built once per distinct token grid from the batch's point maps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from cameo.alignments import CAMEO
from cameo.alignments.cameo.loss import CameoLoss
from cameo_cli.alignment.method import (
    AlignmentInputs,
    AlignmentMethod,
    AlignmentNeeds,
    AlignmentOutput,
    layer_weights,
    recipe_layers,
)

if TYPE_CHECKING:
    from cameo_cli.attention.hooks import MatchScorer
    from cameo_cli.backbone import MultiViewBackbone
    from cameo_cli.config import Recipe


class CameoAlignment(AlignmentMethod):
    """CAMEO on the layers `layers` (token grid and attention heads of each given)."""

    spec = CAMEO

    def __init__(
        self,
        layers: list[int],
        grids: list[tuple[int, int]],
        heads: list[int],
        weights: list[float],
        *,
        epsilon: float,
        selection: str,
        head: str,
        loss: str,
        chunk_size: int | None,
    ) -> None:
        super().__init__()
        self.layers = list(layers)
        self.grids = dict(zip(layers, grids, strict=True))
        self.weights = dict(zip(layers, weights, strict=True))
        self.epsilon = epsilon
        self.selection = selection
        self.losses = nn.ModuleDict(
            {
                str(layer): CameoLoss(count, head=head, loss=loss, chunk_size=chunk_size)
                for layer, count in zip(layers, heads, strict=True)
            }
        )

    @classmethod
    def build(cls, recipe: Recipe, backbone: MultiViewBackbone) -> CameoAlignment:
        layers = recipe_layers(recipe)
        size = recipe.data.resolution
        table = backbone.layers(size)
        a = recipe.alignment
        return cls(
            layers,
            [backbone.token_grid(layer, (size, size)) for layer in layers],
            [table[layer].heads for layer in layers],
            layer_weights(recipe, len(layers)),
            epsilon=a.epsilon,
            selection=a.targets,
            head=a.head,
            loss=a.loss,
            chunk_size=a.chunk_size,
        )

    @property
    def needs(self) -> AlignmentNeeds:
        return AlignmentNeeds(probes=dict(self.grids), geometry=True)

    def correspondence_head(self, layer: int) -> CameoLoss | None:
        """The trained loss (and head) of `layer`, or None when it is not supervised."""
        return self.losses[str(layer)] if layer in self.grids else None

    def match_scorer(self, layer: int) -> MatchScorer | None:
        """The projection head's first-ranked key per query (`CameoLoss.predicted_match`) of
        a supervised `layer`, else None."""
        head = self.correspondence_head(layer)
        return None if head is None else head.predicted_match

    def forward(self, inputs: AlignmentInputs) -> AlignmentOutput:
        from cameo_cli.geometry import correspondence_targets

        targets = {}
        total, terms = None, {}
        for layer in self.layers:
            grid = self.grids[layer]
            if grid not in targets:
                with torch.no_grad():
                    targets[grid] = correspondence_targets(
                        inputs.point_map, inputs.point_valid, grid, self.epsilon, self.selection
                    )
            probe = inputs.probes[layer]
            with torch.autocast(device_type=probe.q.device.type, enabled=False):
                value = self.losses[str(layer)](probe, targets[grid], inputs.ref_mask)
            weighted = self.weights[layer] * value
            total = weighted if total is None else total + weighted
            terms["cameo" if len(self.layers) == 1 else f"cameo/{layer}"] = value
        return AlignmentOutput(total, terms)
