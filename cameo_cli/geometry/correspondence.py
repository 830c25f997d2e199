"""Token-level correspondence targets and the cycle-consistency mask (CAMEO's supervision).

For every ordered pair of views (i, j), i != j, and every query token q of view i, the
nearest key token of view j is the key whose 3D point is nearest to q's 3D point. A row
(q, j) is kept only if the round trip i -> j -> i lands within `epsilon` token units of q
(Euclidean distance in (row, col) token coordinates), and only if q has valid geometry.

Two selections of targets (`alignment.targets`):

- `joint` (the official code, `ArgmaxOneHot` over the keys of all other views together):
  ONE target per query, the nearest key of the nearest view; the other kept rows of that
  query have an all-zero target (index -1): they add nothing but count in the loss's mean.
- `per_pair` (the paper's text read literally): every kept row targets its own view's
  nearest key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cameo_cli.geometry.pointmaps import resize_point_map

TARGET_SELECTIONS = ("joint", "per_pair")


@dataclass
class CorrespondenceTargets:
    """index[b, i, j, q]: key token of view j for query token q of view i (row-major tokens),
    or -1 for a kept row with an all-zero target (`joint`); mask[b, i, j, q]: whether that
    row counts (False on i == j, without geometry, or failing the cycle test). `index` is
    meaningless where `mask` is False."""

    index: torch.Tensor  # [B, F, F, hw] long
    mask: torch.Tensor  # [B, F, F, hw] bool


GROUP = 32  # keys per group in `_first_argmin`


def _first_argmin(values: torch.Tensor) -> torch.Tensor:
    """`values.argmin(-1)` (first index of the minimum) for a last dimension that is a multiple
    of GROUP, in two steps: the minimum of each group of GROUP keys (a vectorised `amin`), the
    first group holding the overall minimum, then the first minimum inside it. About twice as
    fast as `argmin` on CPUs, whose argmin kernel is not vectorised; identical results."""
    groups = values.unflatten(-1, (-1, GROUP))
    best_group = groups.amin(dim=-1).argmin(dim=-1)
    gather_at = best_group[..., None, None].expand(*best_group.shape, 1, GROUP)
    inside = torch.gather(groups, -2, gather_at).squeeze(-2).argmin(dim=-1)
    return best_group * GROUP + inside


def nearest_key_tokens(
    points: torch.Tensor, valid: torch.Tensor, block_elements: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest valid key token for every (query view i, key view j != i, query token).

    points [B, F, N, 3], valid [B, F, N] -> (index [B, F, F, N] long, found [B, F, F, N] bool);
    the diagonal i == j is left 0 and `found` is False there and where view j has no valid
    token. Ties go to the lowest key index. Squared distances |q - k|² = |k|² - 2 q·k + |q|²
    come from one batched matmul of 4-vectors (-2q, 1)·(k, |k|²) over all ordered pairs (|q|²
    does not change the argmin; points are centred per sample first so the expansion stays
    precise), in blocks of query rows of about `block_elements` distances (default 2^20 on
    CPU, cache-sized; 2^27 on GPUs). Invalid keys (and padding to a multiple of GROUP keys)
    get |k|² = inf, so they are never nearest.
    """
    batch, views, tokens = points.shape[:3]
    centred = points - _masked_mean(points, valid)
    sq_norm = (centred * centred).sum(-1)
    sq_norm = torch.where(valid, sq_norm, torch.full_like(sq_norm, float("inf")))
    queries = torch.cat([-2.0 * centred, torch.ones_like(sq_norm)[..., None]], dim=-1)
    keys = torch.cat([centred, sq_norm[..., None]], dim=-1)
    padding = -tokens % GROUP
    if padding:
        pad = torch.zeros(batch, views, padding, 4, dtype=keys.dtype, device=keys.device)
        pad[..., 3] = float("inf")
        keys = torch.cat([keys, pad], dim=2)
    pair_i, pair_j = torch.where(~torch.eye(views, dtype=torch.bool, device=points.device))
    pair_queries = queries[:, pair_i].reshape(-1, tokens, 4)  # [B * P, N, 4]
    pair_keys = keys[:, pair_j].reshape(-1, tokens + padding, 4).transpose(1, 2)
    if block_elements is None:
        block_elements = 2**27 if points.is_cuda else 2**20
    rows = max(1, block_elements // max(1, pair_queries.shape[0] * (tokens + padding)))
    nearest = torch.cat(
        [
            _first_argmin(torch.bmm(pair_queries[:, start : start + rows], pair_keys))
            for start in range(0, tokens, rows)
        ],
        dim=1,
    ).view(batch, len(pair_i), tokens)
    index = torch.zeros(batch, views, views, tokens, dtype=torch.long, device=points.device)
    index[:, pair_i, pair_j] = nearest
    found = valid.any(dim=-1)[:, None, :, None].expand_as(index).clone()
    found[:, torch.arange(views), torch.arange(views)] = False
    return index, found


def _masked_mean(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weights = valid.to(points.dtype)[..., None]
    total = (points * weights).sum(dim=(1, 2), keepdim=True)
    count = weights.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
    return total / count


def cycle_consistent(index: torch.Tensor, grid: tuple[int, int], epsilon: float) -> torch.Tensor:
    """[B, F, F, N] bool: the round trip q -> index[i, j, q] -> index[j, i, .] lands within
    `epsilon` token units of q (Euclidean in (row, col)); `epsilon = inf` keeps every row."""
    if epsilon == float("inf"):
        return torch.ones_like(index, dtype=torch.bool)
    width = grid[1]
    back = torch.gather(index.transpose(1, 2), -1, index)  # index[b, j, i, index[b, i, j, q]]
    query = torch.arange(index.shape[-1], device=index.device)
    d_row = torch.div(back, width, rounding_mode="floor") - torch.div(
        query, width, rounding_mode="floor"
    )
    d_col = back % width - query % width
    return d_row * d_row + d_col * d_col <= epsilon * epsilon


def nearest_view_only(
    index: torch.Tensor, found: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """`index` with -1 everywhere but at each query's nearest view: the key of all other
    views together nearest to the query (ties: the lowest view, then the lowest token)."""
    views, count = index.shape[1], index.shape[-1]
    keys = tokens[:, None].expand(-1, views, -1, -1, -1)  # [B, i, j, N, 3], j's tokens
    nearest = torch.gather(keys, 3, index[..., None].expand(*index.shape, 3))
    distance = (nearest - tokens[:, :, None]).square().sum(-1)
    distance = torch.where(found, distance, torch.full_like(distance, float("inf")))
    best_view = distance.argmin(dim=2, keepdim=True)  # [B, i, 1, N]
    view = torch.arange(views, device=index.device)[None, None, :, None].expand(-1, -1, -1, count)
    return torch.where(view == best_view, index, torch.full_like(index, -1))


def correspondence_targets(
    point_map: torch.Tensor,
    valid: torch.Tensor | None,
    grid: tuple[int, int],
    epsilon: float = 1.5,
    selection: str = "per_pair",
) -> CorrespondenceTargets:
    """Correspondence targets for every ordered view pair on a token grid.

    point_map [B, F, 3, H, W] (one world frame per sample), valid [B, F, H, W] bool or None,
    grid (h, w) tokens per view, `selection` "joint" or "per_pair" (module docstring). The
    point map is bilinearly resized to the grid (see `resize_point_map`: a token is valid
    only if all its interpolation sources are valid). Computed in at least float32, with
    autocast off.
    """
    if selection not in TARGET_SELECTIONS:
        raise ValueError(f"selection must be one of {TARGET_SELECTIONS}, got {selection!r}")
    if point_map.dim() != 5 or point_map.shape[2] != 3:
        raise ValueError(f"point_map must be [B, F, 3, H, W], got {tuple(point_map.shape)}")
    if valid is not None and valid.shape != point_map[:, :, 0].shape:
        raise ValueError(f"valid must be [B, F, H, W], got {tuple(valid.shape)}")
    if point_map.dtype in (torch.float16, torch.bfloat16) or not point_map.is_floating_point():
        point_map = point_map.float()
    with torch.autocast(device_type=point_map.device.type, enabled=False):
        tokens, token_valid = resize_point_map(point_map, valid, grid)
        tokens = tokens.flatten(-2).transpose(-1, -2)  # [B, F, hw, 3]
        token_valid = token_valid.flatten(-2)  # [B, F, hw]
        index, found = nearest_key_tokens(tokens, token_valid)
        mask = found & token_valid[:, :, None, :] & cycle_consistent(index, grid, epsilon)
        if selection == "joint":
            index = nearest_view_only(index, found, tokens)
    return CorrespondenceTargets(index=index, mask=mask)
