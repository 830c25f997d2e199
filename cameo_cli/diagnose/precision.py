"""Correspondence precision of one attention layer against geometric ground truth.

For every ordered view pair i != j and every query token of view i that has a ground-truth
match (the geometry's nearest-3D-point key token, kept by the cycle mask), the predicted
match is the argmax key of view j under the layer's head-averaged attention (softmax of
`q_i · k_jᵀ · scale` per head, then the mean over heads), or under the CAMEO projection
head's map. A prediction counts as correct:

- `exact`: it is the ground-truth token;
- `tokens`: within `radius_tokens` of it on the token grid (Euclidean, token units);
- `pixels`: within `radius_px` of it in image pixels (token distance times the layer's
  stride, so layers of different resolution are comparable; by default 1/8 of the width);
- `3d`: the predicted token's 3D point lies within `radius_3d` (world units; 0.02 = 2 cm
  on metric data, the paper's Precision@2cm) of the query token's 3D point.

Counts are kept per bin of the relative rotation between the two cameras.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cameo_cli.cameras import relative_rotation_angle

ROTATION_EDGES = (30.0, 60.0, 90.0)
ROTATION_BINS = ("0-30", "30-60", "60-90", ">90")
METRICS = ("exact", "tokens", "pixels", "3d")
PIXEL_RADIUS_DIVISOR = 8  # default pixel radius: 4 px at 32 px, 64 px at 512 px


def rotation_bins(world_to_camera: torch.Tensor) -> torch.Tensor:
    """[B, F, F] bin index (into ROTATION_BINS) of the rotation between views i and j."""
    angles = relative_rotation_angle(world_to_camera[:, :, None], world_to_camera[:, None, :])
    edges = torch.tensor(ROTATION_EDGES, dtype=angles.dtype, device=angles.device)
    return torch.bucketize(angles, edges, right=True)


@dataclass
class Radii:
    """Radii of the `tokens`, `pixels` and `3d` metrics (pixels None: 1/8 of the image width)."""

    tokens: float = 1.0
    pixels: float | None = None
    world: float = 0.02

    def resolved(self, image_width: int) -> Radii:
        if self.pixels is not None:
            return self
        return Radii(self.tokens, image_width / PIXEL_RADIUS_DIVISOR, self.world)


@dataclass
class PrecisionCounts:
    """Correct predictions per metric and rotation bin, and the rows scored per bin."""

    hits: torch.Tensor = field(
        default_factory=lambda: torch.zeros(len(METRICS), len(ROTATION_BINS), dtype=torch.long)
    )
    rows: torch.Tensor = field(
        default_factory=lambda: torch.zeros(len(ROTATION_BINS), dtype=torch.long)
    )

    def add(self, other: PrecisionCounts) -> None:
        self.hits += other.hits
        self.rows += other.rows

    def summary(self) -> dict:
        """{"rows", "precision": {metric: value|None}, "by_rotation": {bin: {...}}}."""

        def ratios(hits: torch.Tensor, rows: int) -> dict[str, float | None]:
            return {
                m: (int(h) / rows if rows else None) for m, h in zip(METRICS, hits, strict=True)
            }

        total = int(self.rows.sum())
        return {
            "rows": total,
            "precision": ratios(self.hits.sum(dim=1), total),
            "by_rotation": {
                name: {
                    "rows": int(self.rows[b]),
                    "precision": ratios(self.hits[:, b], int(self.rows[b])),
                }
                for b, name in enumerate(ROTATION_BINS)
            },
        }


def score_matches(
    predicted: torch.Tensor,
    target_index: torch.Tensor,
    target_mask: torch.Tensor,
    grid: tuple[int, int],
    stride: tuple[float, float],
    token_points: torch.Tensor,
    token_valid: torch.Tensor,
    bins: torch.Tensor,
    radii: Radii,
) -> PrecisionCounts:
    """Count correct predictions.

    predicted, target_index [B, F, F, hw] key tokens; target_mask [B, F, F, hw] rows to
    score; stride (pixels per token down, across); token_points [B, F, hw, 3] and
    token_valid [B, F, hw] the point map on the token grid; bins [B, F, F] rotation bins.
    """
    if radii.pixels is None:
        raise ValueError("resolve the pixel radius first (Radii.resolved)")
    width = grid[1]
    rows = target_mask.clone()
    views = rows.shape[1]
    rows &= ~torch.eye(views, dtype=torch.bool, device=rows.device)[None, :, :, None]
    dy = (predicted // width - target_index // width).double()
    dx = (predicted % width - target_index % width).double()
    token_distance = torch.sqrt(dy**2 + dx**2)
    pixel_distance = torch.sqrt((dy * stride[0]) ** 2 + (dx * stride[1]) ** 2)

    batch, _, hw = token_valid.shape
    key_points = token_points[:, None].expand(batch, views, views, hw, 3)
    predicted_points = key_points.gather(3, predicted[..., None].expand(-1, -1, -1, -1, 3))
    predicted_ok = token_valid[:, None].expand(batch, views, views, hw).gather(3, predicted)
    query_points = token_points[:, :, None].expand(batch, views, views, hw, 3)
    world_distance = torch.linalg.vector_norm((predicted_points - query_points).double(), dim=-1)

    correct = torch.stack(
        [
            predicted == target_index,
            token_distance <= radii.tokens,
            pixel_distance <= radii.pixels,
            predicted_ok & (world_distance <= radii.world),
        ]
    )  # [metrics, B, F, F, hw]
    bin_rows = bins[:, :, :, None].expand_as(rows)
    counts = PrecisionCounts()
    for b in range(len(ROTATION_BINS)):
        selected = rows & (bin_rows == b)
        counts.rows[b] = int(selected.sum())
        counts.hits[:, b] = (correct & selected).flatten(1).sum(dim=1).cpu()
    return counts
