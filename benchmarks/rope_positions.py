"""Does Hunyuan-DiT's shared 2D RoPE inflate `cameo diagnose`'s precision?

With `view_positions: shared` every view has the same RoPE positions, so the positional part
of a cross-view logit is largest for the same pixel position in the other view. On small
baselines many correspondences sit near that position, and attention that follows position
alone would score as correspondence. Measured with diagnose's own scoring (`layer_precision`,
view sets of `eval_index.json`, timestep 500) at the default layer of a tiny Hunyuan-DiT on a
prepared synthetic set, for `shared` and `distinct` positions:

- `fresh`: the randomly initialised model (seed 0), as `cameo diagnose` scores a new model;
- `positional`: the same model with the layer's q and k planted as one constant vector
  (to_q / to_k weights zeroed, the same bias and norm), so its attention follows RoPE
  position only: the precision position alone earns;
- `same token`: the share of scored rows whose target is the query's own token position
  (what the positional layer finds with shared positions).

    cameo prepare synthetic --out data/synthetic --scenes 16
    OMP_NUM_THREADS=1 python benchmarks/rope_positions.py --dataset data/synthetic --scenes 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cameo_cli.codec import load_codec
from cameo_cli.config import load_recipe
from cameo_cli.diagnose.job import (
    collate,
    evaluation_views,
    layer_precision,
    open_diagnose_dataset,
)
from cameo_cli.diagnose.request import DiagnosedModel, DiagnoseRequest, Diagnosis
from cameo_cli.geometry import correspondence_targets
from cameo_cli.registry import build_backbone


def plant_positional(backbone, layer: int) -> None:
    """q = k = one constant vector at `layer`: its logits depend on RoPE positions only."""
    attn = backbone.model.blocks[layer].attn1
    with torch.no_grad():
        attn.to_q.weight.zero_()
        attn.to_k.weight.zero_()
        attn.to_k.bias.copy_(attn.to_q.bias)
        attn.norm_k.load_state_dict(attn.norm_q.state_dict())


def same_token_share(dataset, views, grid: tuple[int, int]) -> float:
    """Share of the scored rows whose target key is the query's own token position."""
    same = rows = 0
    for view_set in views:
        batch = collate(dataset, [view_set])
        targets = correspondence_targets(batch.point_map, batch.point_valid, grid)
        tokens = torch.arange(grid[0] * grid[1])
        same += int((targets.mask & (targets.index == tokens)).sum())
        rows += int(targets.mask.sum())
    return same / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=16)
    args = parser.parse_args()
    recipe = load_recipe("quickstart-cpu")
    codec = load_codec(recipe.codec).eval()
    dataset = open_diagnose_dataset(args.dataset, recipe)
    views = evaluation_views(dataset, args.scenes)
    request = DiagnoseRequest(backbone="hunyuan-dit", dataset=args.dataset, out=Path("unused"))
    print(f"{len(views)} view sets of {dataset.num_views} views at {recipe.data.resolution} px")
    for positions in ("shared", "distinct"):
        for planted in (False, True):
            torch.manual_seed(0)
            backbone = build_backbone(
                "hunyuan-dit", "tiny", in_channels=codec.channels, view_positions=positions
            ).eval()
            layer = backbone.default_layer
            if planted:
                plant_positional(backbone, layer)
            model = DiagnosedModel(backbone, codec, recipe, "tiny")
            summary = layer_precision(Diagnosis(request, model, dataset, views), [layer])[0]
            precision = summary["attention"]["precision"]
            values = ", ".join(f"{name} {value:.3f}" for name, value in precision.items())
            kind = "positional" if planted else "fresh"
            print(f"{positions:8s} {kind:10s} layer {layer}: {values}")
    grid = backbone.token_grid(layer, (recipe.data.resolution,) * 2)
    share = same_token_share(dataset, views, grid)
    print(f"same token: {share:.3f} of the scored rows ({grid[0]}x{grid[1]} tokens)")


if __name__ == "__main__":
    main()
