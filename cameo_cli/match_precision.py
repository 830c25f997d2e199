"""Correspondence precision of one attention layer against geometric ground truth: the one
scorer of `cameo diagnose` and of training's validation (`val/precision*`).

For every ordered view pair i != j and every query token of view i that has a ground-truth
match (the geometry's nearest-3D-point key token, kept by the cycle mask), the predicted
match is the argmax key of view j under the layer's head-averaged attention (softmax of
`q_i · k_jᵀ · scale` per head, then the mean over heads), or under the CAMEO projection
head's map. A prediction counts as correct:

- `exact`: it is the ground-truth token;
- `tokens`: within `radius_tokens` of it on the token grid (Euclidean, token units);
- `pixels`: within `radius_px` of it in image pixels (token distance times the layer's
  stride, so layers of different resolution are comparable; by default 1/8 of the width);
- 3D: the predicted token's 3D point lies near the query token's 3D point. On metric data
  (every scored scene records `metres_per_unit` in index.json: DTU, NAVI) one metric per
  radius in centimetres, `3d@1cm`, `3d@2cm`, `3d@5cm` (the paper's Precision@2cm); on other
  data one metric `3d@{r}tok`: within `radius_tokens` token footprints, a footprint being
  the width one token of the layer covers at the query point's depth in view j
  (``z_j * stride / f_j``), so the radius follows the data's scale and the layer's grid.

Counts are kept per bin of the relative rotation between the two cameras.

Chance: the same rows scored again with the key tokens shuffled (`chance_counts`), per
metric, since a radius covers more of a coarse grid (within 4 px of a 2x2 grid at 32 px is
one token in four: chance 0.25) than of a fine one (about 1/hw for `exact`). A layer is
ranked by its lift, precision minus chance (`lift`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from cameo_cli.cameras import relative_rotation_angle

if TYPE_CHECKING:
    from cameo_cli.attention.hooks import ProbeResult
    from cameo_cli.batch import ViewBatch

ROTATION_EDGES = (30.0, 60.0, 90.0)
ROTATION_BINS = ("0-30", "30-60", "60-90", ">90")
GRID_METRICS = ("exact", "tokens", "pixels")
METRIC_RADII_CM = (1.0, 2.0, 5.0)
HEADLINE_CM = 2.0  # the paper's Precision@2cm
PIXEL_RADIUS_DIVISOR = 8  # default pixel radius: 4 px at 32 px, 64 px at 512 px
CHANCE_DRAWS = 8  # key shuffles per scored batch
CHANCE_SEED = 0


def rotation_bins(world_to_camera: torch.Tensor) -> torch.Tensor:
    """[B, F, F] bin index (into ROTATION_BINS) of the rotation between views i and j."""
    angles = relative_rotation_angle(world_to_camera[:, :, None], world_to_camera[:, None, :])
    edges = torch.tensor(ROTATION_EDGES, dtype=angles.dtype, device=angles.device)
    return torch.bucketize(angles, edges, right=True)


@dataclass
class Radii:
    """Radii of the `tokens` and `pixels` metrics (pixels None: 1/8 of the image width) and
    the 3D radii in cm used on metric data (on other data the 3D radius is `tokens`
    token footprints)."""

    tokens: float = 1.0
    pixels: float | None = None
    metric_cm: tuple[float, ...] = METRIC_RADII_CM

    def resolved(self, image_width: int) -> Radii:
        if self.pixels is not None:
            return self
        return Radii(self.tokens, image_width / PIXEL_RADIUS_DIVISOR, self.metric_cm)

    def metrics(self, metric: bool) -> tuple[str, ...]:
        """The metric names scored on metric (True) or unitless (False) data."""
        if metric:
            return GRID_METRICS + tuple(f"3d@{r:g}cm" for r in self.metric_cm)
        return (*GRID_METRICS, f"3d@{self.tokens:g}tok")


def headline_metric(metrics: tuple[str, ...] | list[str]) -> str:
    """The 3D metric shown by rotation bin: `3d@2cm` when scored, else the last 3D one."""
    wanted = f"3d@{HEADLINE_CM:g}cm"
    return wanted if wanted in metrics else [m for m in metrics if m.startswith("3d@")][-1]


def metric_label(metric: str, radii: dict) -> str:
    """A column heading: `exact`, `≤1 tok`, `≤4 px`, `≤2 cm`, `≤1 tok (3D)`."""
    if metric == "tokens":
        return f"≤{radii['tokens']:g} tok"
    if metric == "pixels":
        return f"≤{radii['pixels']:g} px"
    if metric.startswith("3d@"):
        radius = metric.removeprefix("3d@")
        return f"≤{radius[:-2]} cm" if radius.endswith("cm") else f"≤{radius[:-3]} tok (3D)"
    return metric


def token_footprints(
    token_points: torch.Tensor,
    intrinsics: torch.Tensor,
    world_to_camera: torch.Tensor,
    stride: tuple[float, float],
) -> torch.Tensor:
    """[B, F, F, hw] world width of one token of view j at query token n of view i:
    ``z_j(p_in) * stride / f_j`` (token_points [B, F, hw, 3] world, K [B, F, 3, 3] px)."""
    w2c = world_to_camera.to(token_points.dtype)
    depth = torch.einsum("bjc,binc->bijn", w2c[:, :, 2, :3], token_points)
    depth = depth + w2c[:, None, :, 2, 3, None]
    focal = intrinsics.to(token_points.dtype)[:, :, 0, 0]
    return depth * stride[1] / focal[:, None, :, None]


@dataclass
class PrecisionCounts:
    """Correct predictions per metric (`metrics`) and rotation bin, and the rows scored."""

    metrics: tuple[str, ...]
    hits: torch.Tensor = field(init=False)
    rows: torch.Tensor = field(
        default_factory=lambda: torch.zeros(len(ROTATION_BINS), dtype=torch.long)
    )

    def __post_init__(self) -> None:
        self.hits = torch.zeros(len(self.metrics), len(ROTATION_BINS), dtype=torch.long)

    def add(self, other: PrecisionCounts) -> None:
        if other.metrics != self.metrics:
            raise ValueError(f"cannot add counts of {other.metrics} to {self.metrics}")
        self.hits += other.hits
        self.rows += other.rows

    def summary(self) -> dict:
        """{"rows", "precision": {metric: value|None}, "by_rotation": {bin: {...}}}."""

        def ratios(hits: torch.Tensor, rows: int) -> dict[str, float | None]:
            return {
                m: (int(h) / rows if rows else None)
                for m, h in zip(self.metrics, hits, strict=True)
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
    *,
    metres_per_unit: torch.Tensor | None = None,
    footprints: torch.Tensor | None = None,
) -> PrecisionCounts:
    """Count correct predictions.

    predicted, target_index [B, F, F, hw] key tokens; target_mask [B, F, F, hw] rows to
    score; stride (pixels per token down, across); token_points [B, F, hw, 3] and
    token_valid [B, F, hw] the point map on the token grid; bins [B, F, F] rotation bins.
    3D: on metric data `metres_per_unit` [B] (each sample's world unit), else `footprints`
    [B, F, F, hw] (`token_footprints`).
    """
    if radii.pixels is None:
        raise ValueError("resolve the pixel radius first (Radii.resolved)")
    if (metres_per_unit is None) == (footprints is None):
        raise ValueError("give metres_per_unit (metric data) or footprints, not both")
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
    if metres_per_unit is not None:
        metres = world_distance * metres_per_unit.double().to(rows.device)[:, None, None, None]
        near = [metres <= radius / 100.0 for radius in radii.metric_cm]
    else:
        near = [world_distance <= radii.tokens * footprints.double()]

    correct = torch.stack(
        [
            predicted == target_index,
            token_distance <= radii.tokens,
            pixel_distance <= radii.pixels,
            *(predicted_ok & hit for hit in near),
        ]
    )  # [metrics, B, F, F, hw]
    bin_rows = bins[:, :, :, None].expand_as(rows)
    counts = PrecisionCounts(radii.metrics(metres_per_unit is not None))
    for b in range(len(ROTATION_BINS)):
        selected = rows & (bin_rows == b)
        counts.rows[b] = int(selected.sum())
        counts.hits[:, b] = (correct & selected).flatten(1).sum(dim=1).cpu()
    return counts


def precision_scorer(
    probe: ProbeResult,
    batch: ViewBatch,
    radii: Radii,
    epsilon: float,
    *,
    metres_per_unit: torch.Tensor | None = None,
    pairs: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], PrecisionCounts]:
    """A function counting predicted key tokens [B, F, F, hw] on `probe`'s grid against the
    batch's per-pair correspondence (`correspondence_targets`, `epsilon`): 3D radii in cm
    with `metres_per_unit` [B] (metric data), else in token footprints; only the (query
    view, key view) `pairs` [F, F] when given."""
    from cameo_cli.geometry import correspondence_targets, resize_point_map

    device = probe.q.device
    points = batch.point_map.to(device)
    valid = batch.point_valid.to(device)
    grid = probe.grid
    targets = correspondence_targets(points, valid, grid, epsilon=epsilon)
    rows = targets.mask if pairs is None else targets.mask & pairs.to(device)[None, :, :, None]
    token_points, token_valid = resize_point_map(points, valid, grid)
    token_points = token_points.flatten(-2).transpose(-1, -2)
    token_valid = token_valid.flatten(-2)
    height, width = batch.image_size
    stride = (height / grid[0], width / grid[1])
    radii = radii.resolved(width)
    w2c = batch.world_to_camera.to(device)
    bins = rotation_bins(w2c)
    footprints = None
    if metres_per_unit is None:
        footprints = token_footprints(token_points, batch.intrinsics.to(device), w2c, stride)

    def score(predicted: torch.Tensor) -> PrecisionCounts:
        return score_matches(
            predicted,
            targets.index,
            rows,
            grid,
            stride,
            token_points,
            token_valid,
            bins,
            radii,
            metres_per_unit=metres_per_unit,
            footprints=footprints,
        )

    return score


def shuffled_keys(predicted: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`predicted` [B, F, F, hw] key tokens relabelled by a random permutation of view j's
    hw key tokens, drawn per (sample, query view, key view): the prediction of an attention
    map whose keys were shuffled before the argmax. Each predicted key lands on every token
    with probability 1/hw, whatever the layer predicted, so scoring it measures chance."""
    permutations = torch.rand(predicted.shape, generator=generator).argsort(dim=-1)
    return permutations.to(predicted.device).gather(-1, predicted)


def chance_counts(
    score: Callable[[torch.Tensor], PrecisionCounts],
    predicted: torch.Tensor,
    *,
    draws: int = CHANCE_DRAWS,
    seed: int = CHANCE_SEED,
) -> PrecisionCounts:
    """Chance per metric: `score` (the rows and metrics of the real predictions) applied to
    `draws` key shuffles of `predicted` (`shuffled_keys`, a generator seeded `seed`)."""
    generator = torch.Generator().manual_seed(seed)
    total, *others = [score(shuffled_keys(predicted, generator)) for _ in range(draws)]
    for counts in others:
        total.add(counts)
    return total


def lift(precision: dict[str, float | None], chance: dict[str, float | None]) -> dict:
    """Precision minus chance per metric (None where either is).

    A difference, not a ratio: it is in precision's units (0 = no better than shuffled
    keys, negative = worse, at most 1 - chance), so a fine layer's few lucky hits over a
    tiny chance (exact on 32x32 tokens: 1/1024) cannot outrank a coarse layer that is right
    far above its chance, as a ratio would let them."""
    return {
        m: None if p is None or chance[m] is None else p - chance[m] for m, p in precision.items()
    }
