"""One scale per scene between per-call VGGT predictions and the dataset's cameras.

A scene longer than one VGGT call runs in overlapping windows (`windows`); each call has its
own frame and scale. The frames two windows share tie their depth scales together
(`chain_window_scales`: the median depth ratio on pixels valid in both), so every window's
depth is in the first window's scale; then one scale to the dataset is fitted from all frames
at once (`fit_shared_scale`): the VGGT camera centres of each window, in the chained scale,
against the dataset's camera centres, with one rigid motion per window (its rotation from
the camera orientations, its translation from the centroids) and the scale shared by all.
Depth in the dataset's scale is then ``scale * chain[w] * depth_w``, and points come from
the dataset's own intrinsics and poses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cameo_cli import cameras


def windows(num_frames: int, size: int, overlap: int) -> list[range]:
    """Consecutive frame windows of at most `size` frames covering ``0..num_frames-1``, each
    sharing at least `overlap` frames with the next (the last one ends at the last frame)."""
    if not 0 <= overlap < size:
        raise ValueError(f"need 0 <= overlap < size, got overlap {overlap}, size {size}")
    if num_frames <= size:
        return [range(num_frames)]
    starts = list(range(0, num_frames - size, size - overlap)) + [num_frames - size]
    return [range(start, start + size) for start in starts]


def home_window(frame: int, spans: list[range]) -> int:
    """The window in which `frame` is farthest from an end (its depth is taken from there)."""
    margins = [min(frame - s.start, s.stop - 1 - frame) if frame in s else -1 for s in spans]
    return max(range(len(spans)), key=lambda w: (margins[w], -w))


def depth_edges(depth: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """[..., H, W] bool: pixels whose 3 x 3 neighbourhood (valid pixels) spans a depth ratio
    max / min above ``1 + threshold`` (a foreground / background boundary)."""
    big = torch.where(valid, depth, torch.zeros_like(depth))
    small = torch.where(valid, depth, torch.full_like(depth, float("inf")))
    flat = (-1, 1, *depth.shape[-2:])
    high = torch.nn.functional.max_pool2d(big.reshape(flat), 3, 1, 1).reshape(depth.shape)
    low = -torch.nn.functional.max_pool2d(-small.reshape(flat), 3, 1, 1).reshape(depth.shape)
    return valid & (high > low * (1.0 + threshold))


def chain_window_scales(
    spans: list[range], depths: list[torch.Tensor], valids: list[torch.Tensor]
) -> list[float]:
    """Factor per window that puts its depth into the first window's scale: through the
    frames shared with the previous window, the median of (previous depth / this depth) over
    pixels valid in both. depths[w], valids[w]: [len(spans[w]), H, W]."""
    factors = [1.0]
    for w in range(1, len(spans)):
        shared = [f for f in spans[w] if f in spans[w - 1]]
        prev = torch.stack([depths[w - 1][f - spans[w - 1].start] for f in shared])
        this = torch.stack([depths[w][f - spans[w].start] for f in shared])
        both = torch.stack([valids[w - 1][f - spans[w - 1].start] for f in shared]) & torch.stack(
            [valids[w][f - spans[w].start] for f in shared]
        )
        if not both.any():
            raise ValueError(f"windows {w - 1} and {w} share no valid depth")
        factors.append(factors[-1] * float((prev[both] / this[both]).median()))
    return factors


@dataclass(frozen=True)
class ScaleFit:
    """The scale from the chained VGGT depth to the dataset's units, and how well it fits:
    `residual` = RMS camera-centre error after the fit / RMS spread of the dataset's centres
    (per window about their mean); `rotation_error` = median angle (degrees) between the
    dataset's camera rotations and the fitted ones."""

    scale: float
    residual: float
    rotation_error: float


def _rotation_between(given_c2w: torch.Tensor, vggt_c2w: torch.Tensor) -> torch.Tensor:
    """The rotation R minimising sum_k |given_k - R vggt_k|² (chordal mean, projected on SO(3))."""
    u, _, vt = torch.linalg.svd((given_c2w @ vggt_c2w.transpose(-1, -2)).sum(0))
    sign = torch.ones(3, dtype=u.dtype)
    sign[2] = torch.sign(torch.det(u @ vt))
    return u @ torch.diag(sign) @ vt


def fit_shared_scale(
    spans: list[range],
    vggt_w2c: list[torch.Tensor],
    factors: list[float],
    dataset_w2c: torch.Tensor,
) -> ScaleFit:
    """Fit one scale s mapping VGGT camera centres, times the window's chain factor, onto
    the dataset's camera centres (`dataset_w2c` [N, 4, 4]), with one rotation per window taken
    from the camera orientations (so straight-line trajectories, common in RealEstate10K, fit
    as well as any) and one translation per window (the centroids).

    Raises ValueError when the cameras do not move (scale unobservable) or s <= 0.
    """
    dataset_w2c = dataset_w2c.double()
    numerator, denominator, spread = 0.0, 0.0, 0.0
    parts = []
    for span, w2c, factor in zip(spans, vggt_w2c, factors, strict=True):
        w2c = w2c.double()
        given = dataset_w2c[span.start : span.stop]
        given_c2w = given[:, :3, :3].transpose(-1, -2)
        vggt_c2w = w2c[:, :3, :3].transpose(-1, -2)
        rotation = _rotation_between(given_c2w, vggt_c2w)
        ours = cameras.camera_centers(w2c) * factor
        theirs = cameras.camera_centers(given)
        ours = (ours - ours.mean(0)) @ rotation.T
        theirs = theirs - theirs.mean(0)
        numerator += float((ours * theirs).sum())
        denominator += float((ours * ours).sum())
        spread += float((theirs * theirs).sum())
        angle = cameras.relative_rotation_angle(given_c2w, rotation @ vggt_c2w)
        parts.append((ours, theirs, angle))
    if spread <= 1e-12 or denominator <= 1e-12:
        raise ValueError("the cameras do not move, so the depth scale cannot be fitted")
    scale = numerator / denominator
    if scale <= 0:
        raise ValueError("VGGT's camera motion runs against the dataset's (negative scale)")
    error = sum(float(((theirs - scale * ours) ** 2).sum()) for ours, theirs, _ in parts)
    return ScaleFit(
        scale=scale,
        residual=(error / spread) ** 0.5,
        rotation_error=float(torch.cat([angle for _, _, angle in parts]).median()),
    )
