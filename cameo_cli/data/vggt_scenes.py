"""``--geometry vggt``: depth predicted by VGGT for whole scenes at prepare time.

The model (`cameo_cli.geometry.vggt.VGGTDepth`) is loaded once per worker process. A scene
runs through it in overlapping windows of consecutive frames (`VGGTSettings.window`,
`.overlap`); VGGT's depth is resized to the image by nearest pixel (never interpolated across
a depth edge) and masked where VGGT is least confident and at depth edges; the windows are
tied to one scale and that scale is fitted to the dataset's cameras from all frames
(`cameo_cli.geometry.scale_fit`). The frames keep the dataset's own intrinsics and poses, and
their depth in the dataset's units: point maps are unprojected from it when the dataset is
read. A scene whose fit is bad is skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cameo_cli.data.records import FrameData, SkipScene, nearest_indices

if TYPE_CHECKING:
    import torch

    from cameo_cli.geometry.vggt import VGGTPrediction


@dataclass(frozen=True)
class VGGTSettings:
    """How VGGT depth is made and checked (recorded in index.json)."""

    window: int = 24  # frames per VGGT call (memory grows with it)
    overlap: int = 8  # frames consecutive windows share (they tie the windows' scales)
    drop_confidence: float = 0.2  # fraction of each frame's least confident pixels dropped
    edge_threshold: float = 0.1  # a 3x3 depth ratio above 1 + this marks a depth edge
    max_residual: float = 0.2  # camera-centre fit residual (relative) above it: scene skipped
    max_rotation_error: float = 5.0  # median camera rotation disagreement (degrees) above it


_models: dict[Path, object] = {}


def check_vggt(weights: Path | None, settings: VGGTSettings) -> None:
    """Fail early (one line) when VGGT or its weights are missing or the settings are bad."""
    from cameo_cli.errors import CameoError
    from cameo_cli.geometry.vggt import import_vggt, weights_file

    if weights is None:
        raise CameoError("--geometry vggt needs --vggt-weights FILE|DIR (local VGGT-1B weights)")
    if settings.window < 2 or not 1 <= settings.overlap < settings.window:
        raise CameoError(
            f"--vggt-window {settings.window} / --vggt-overlap {settings.overlap}: need a window "
            "of at least 2 frames and 1 <= overlap < window"
        )
    import_vggt()
    weights_file(weights)


def _model(weights: Path):
    from cameo_cli.geometry.vggt import VGGTDepth

    if weights not in _models:
        _models[weights] = VGGTDepth(weights)
    return _models[weights]


def kept_depth(
    prediction: VGGTPrediction, size: tuple[int, int], settings: VGGTSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """(depth [F, H, W], valid [F, H, W] bool) of a `VGGTPrediction` at the image size
    `size` by nearest pixel, in VGGT's scale: 0 and invalid where it is not finite or
    positive, among each frame's `drop_confidence` least confident pixels, or on a depth edge."""
    import torch

    from cameo_cli.geometry.scale_fit import depth_edges

    height, width = size
    rows = torch.from_numpy(nearest_indices(prediction.depth.shape[-2], height, 0, height))
    cols = torch.from_numpy(nearest_indices(prediction.depth.shape[-1], width, 0, width))
    depth = prediction.depth[:, rows][:, :, cols]
    confidence = prediction.confidence[:, rows][:, :, cols]
    valid = torch.isfinite(depth) & (depth > 0) & torch.isfinite(confidence)
    floor = torch.quantile(confidence.flatten(1), settings.drop_confidence, dim=1)
    valid &= confidence >= floor[:, None, None]
    valid &= ~depth_edges(depth, valid, settings.edge_threshold)
    return torch.where(valid, depth, torch.zeros_like(depth)), valid


def add_vggt_depth(
    frames: list[FrameData], weights: Path, settings: VGGTSettings = VGGTSettings()
) -> dict:
    """Set ``depth`` (float32 [H, W] in the dataset's units, 0 where unknown) on every frame
    and return the scene's fit {scale, residual, rotation_error_deg, windows}; raise
    `SkipScene` with the reason when the fit is bad."""
    import torch

    from cameo_cli.geometry.scale_fit import (
        chain_window_scales,
        fit_shared_scale,
        home_window,
        windows,
    )

    model = _model(Path(weights))
    height, width = frames[0].image.shape[:2]
    spans = windows(len(frames), settings.window, settings.overlap)
    depths, valids, vggt_w2c = [], [], []
    for span in spans:
        batch = [frames[k] for k in span]
        images = torch.from_numpy(np.stack([f.image for f in batch])).permute(0, 3, 1, 2)
        prediction = model(images.float() / 127.5 - 1.0)
        depth, valid = kept_depth(prediction, (height, width), settings)
        depths.append(depth)
        valids.append(valid)
        vggt_w2c.append(prediction.world_to_camera)
    dataset_w2c = torch.from_numpy(np.stack([f.world_to_camera for f in frames]))
    try:
        factors = chain_window_scales(spans, depths, valids)
        fit = fit_shared_scale(spans, vggt_w2c, factors, dataset_w2c)
    except ValueError as error:
        raise SkipScene(f"VGGT depth scale: {error}") from None
    if not fit.residual <= settings.max_residual:
        raise SkipScene(
            f"VGGT cameras do not fit the dataset's: camera-centre residual {fit.residual:.3f} "
            f"> {settings.max_residual}"
        )
    if not fit.rotation_error <= settings.max_rotation_error:
        raise SkipScene(
            f"VGGT cameras do not fit the dataset's: median rotation error "
            f"{fit.rotation_error:.2f} deg > {settings.max_rotation_error}"
        )
    for k, frame in enumerate(frames):
        w = home_window(k, spans)
        depth = depths[w][k - spans[w].start] * (factors[w] * fit.scale)
        frame.depth = depth.numpy().astype(np.float32)
    return {
        "scale": fit.scale,
        "residual": fit.residual,
        "rotation_error_deg": fit.rotation_error,
        "windows": len(spans),
    }
