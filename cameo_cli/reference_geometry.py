"""Reference-only geometry for MVGenMaster's priors: depth that VGGT estimates from the
reference images alone, in the units of the references' cameras.

A prepared RealEstate10K's depth (`cameo prepare --geometry vggt`) comes from VGGT windows
that also hold target frames; `cameo evaluate --reference-depth vggt` and `cameo sample
--reference-depth vggt` give the priors what inference from the references alone gives
instead. One VGGT call on the N references (`VGGTDepth`) returns depth and cameras in VGGT's
own frame and scale; its depth is kept where `cameo prepare` keeps it (`kept_depth`: the least
confident pixels and depth edges dropped) and scaled by the one factor that maps VGGT's
camera centres onto the given cameras' (`fit_shared_scale` on one window: with 2 references
the ratio of their baselines). One reference has no baseline, so no scale: refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cameo_cli.data.vggt_scenes import VGGTSettings, kept_depth
from cameo_cli.errors import CameoError
from cameo_cli.geometry.scale_fit import fit_shared_scale
from cameo_cli.geometry.vggt import VGGTDepth, import_vggt, weights_file

REFERENCE_DEPTHS = ("dataset", "vggt", "none")  # `cameo evaluate --reference-depth`
MIN_REFERENCES = 2
SETTINGS = VGGTSettings()  # `cameo prepare --geometry vggt`'s confidence and edge masks
ONE_REFERENCE = (
    "--reference-depth vggt fits VGGT's depth scale to the references' camera baseline, so it "
    f"needs at least {MIN_REFERENCES} references"
)


def check_vggt_option(reference_depth: str | None, weights: Path | None) -> None:
    """Refuse (one line) `--vggt-weights` without `--reference-depth vggt`, and `vggt`
    without an installed `vggt` package or local weights."""
    if reference_depth != "vggt":
        if weights is not None:
            raise CameoError(f"--vggt-weights {weights}: only used with --reference-depth vggt")
        return
    if weights is None:
        raise CameoError("--reference-depth vggt needs --vggt-weights FILE|DIR (local VGGT-1B)")
    import_vggt()
    weights_file(weights)


@dataclass
class ReferenceDepth:
    """The references' z-depth [N, H, W] float32 in the cameras' units (0 = unknown) and the
    fit that scaled it (`ScaleFit`'s scale, residual, rotation error in degrees)."""

    depth: torch.Tensor
    scale: float
    residual: float
    rotation_error: float

    def fit(self) -> dict[str, float]:
        """The fit as recorded in results (evaluate's scene files, sample.json)."""
        return {
            "scale": self.scale,
            "residual": self.residual,
            "rotation_error_deg": self.rotation_error,
        }


class ReferenceVGGT:
    """VGGT loaded once from local weights; call it on the references of one sample."""

    def __init__(self, weights: str | Path, *, device: torch.device | str | None = None) -> None:
        self.model = VGGTDepth(weights, device=device)

    def __call__(self, images: torch.Tensor, world_to_camera: torch.Tensor) -> ReferenceDepth:
        """images [N, 3, H, W] in [0, 1] with their OpenCV world-to-camera [N, 4, 4] -> their
        depth in the cameras' units. CameoError for fewer than 2 references or cameras that
        do not move (no baseline) or move against VGGT's."""
        if len(images) < MIN_REFERENCES:
            raise CameoError(f"{ONE_REFERENCE}, got {len(images)}")
        prediction = self.model(images.float() * 2.0 - 1.0)
        depth, _ = kept_depth(prediction, tuple(images.shape[-2:]), SETTINGS)
        span = range(len(images))
        try:
            fit = fit_shared_scale([span], [prediction.world_to_camera], [1.0], world_to_camera)
        except ValueError as error:
            raise CameoError(f"VGGT depth scale of the references: {error}") from None
        return ReferenceDepth(
            (depth * fit.scale).float(), fit.scale, fit.residual, fit.rotation_error
        )
