"""``--geometry vggt``: point maps predicted by VGGT for whole scenes at prepare time.

The model (`cameo_cli.geometry.vggt.VGGTPointMaps`) is loaded once per worker process. Frames
go through it in chunks of consecutive frames; each chunk's points are mapped into the scene's
world frame with the dataset's own cameras, so all frames of a scene share one frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cameo_cli.data.records import FrameData

CHUNK = 24  # frames per VGGT call (memory grows with the number of frames)

_models: dict[Path, object] = {}


def check_vggt(weights: Path | None) -> None:
    """Fail early (one line) when VGGT or its weights are missing."""
    from cameo_cli.errors import CameoError
    from cameo_cli.geometry.vggt import _import_vggt, _weights_file

    if weights is None:
        raise CameoError("--geometry vggt needs --vggt-weights FILE|DIR (local VGGT-1B weights)")
    _import_vggt()
    _weights_file(weights)


def add_vggt_point_maps(frames: list[FrameData], weights: Path, chunk: int = CHUNK) -> None:
    """Set ``point_map`` (float32 [H, W, 3], NaN where VGGT is not confident) on every frame."""
    from cameo_cli.geometry.vggt import VGGTPointMaps

    weights = Path(weights)
    if weights not in _models:
        _models[weights] = VGGTPointMaps(weights)
    model = _models[weights]
    for start in range(0, len(frames), chunk):
        batch = frames[start : start + chunk]
        images = torch.from_numpy(np.stack([f.image for f in batch])).permute(0, 3, 1, 2)
        w2c = torch.from_numpy(np.stack([f.world_to_camera for f in batch]))
        points, valid = model(images.float() / 127.5 - 1.0, w2c.double())
        points = points.permute(0, 2, 3, 1).double().cpu().numpy()
        points[~valid.cpu().numpy()] = np.nan
        for frame, frame_points in zip(batch, points, strict=True):
            frame.point_map = frame_points.astype(np.float32)
