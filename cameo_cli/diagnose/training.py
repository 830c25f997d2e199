"""The checkpoints of a training run and its validation PSNR curve."""

from __future__ import annotations

from pathlib import Path

from cameo_cli.errors import CameoError
from cameo_cli.run_folder.layout import CHECKPOINTS, list_checkpoints
from cameo_cli.run_folder.metrics import read_metrics


def run_checkpoints(run: Path) -> list[Path]:
    """Every complete checkpoint folder of `run`, oldest first."""
    run = Path(run)
    if not run.is_dir():
        raise CameoError(f"{run}: --run is not a folder")
    folders = list_checkpoints(run / CHECKPOINTS)
    if not folders:
        raise CameoError(f"{run}: no checkpoints in {run / CHECKPOINTS} (is it a cameo run?)")
    return folders


def validation_psnr(run: Path) -> list[dict[str, float]]:
    """[{"step", "psnr"}] from the run's metrics (`val/psnr` lines), in step order."""
    points = [
        {"step": record["step"], "psnr": float(record["val/psnr"])}
        for record in read_metrics(run, required=False)
        if record.get("val/psnr") is not None
    ]
    return sorted(points, key=lambda point: point["step"])
