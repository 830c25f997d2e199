"""The checkpoints of a training run and its validation PSNR curve."""

from __future__ import annotations

import json
from pathlib import Path

from cameo_cli.checkpoints import CHECKPOINTS, METRICS, list_checkpoints
from cameo_cli.errors import CameoError


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
    """[{"step", "psnr"}] from the run's metrics.jsonl (`val/psnr` lines), in step order."""
    path = Path(run) / METRICS
    if not path.is_file():
        return []
    points = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CameoError(f"{path}:{number}: not a JSON line ({error})") from error
        if record.get("val/psnr") is not None:
            points.append({"step": int(record["step"]), "psnr": float(record["val/psnr"])})
    return sorted(points, key=lambda point: point["step"])
