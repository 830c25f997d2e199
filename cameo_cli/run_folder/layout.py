"""The names in a run folder and a checkpoint folder, finding checkpoints, and the run
folder's own files (created, reset, meta.json).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from cameo_cli import __version__
from cameo_cli.errors import CameoError
from cameo_cli.files import read_json, write_json

# a run folder (and config.yaml in each checkpoint and export too)
CONFIG = "config.yaml"
META = "meta.json"
METRICS = "metrics.jsonl"
TRACKER_IDS = "trackers.json"  # MLflow / W&B run ids, for --resume
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
TENSORBOARD = "tensorboard"
MLRUNS = "mlruns"
WANDB = "wandb"
# a checkpoint folder (an export holds the inference part of one)
BACKBONE = "backbone"
ALIGNMENT = "alignment.safetensors"
EMA = "ema.safetensors"
PROGRESS = "state.json"
EXPORT_INDEX = "model_index.json"  # marks a folder written by `cameo export`
_STEP_FOLDER = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders in `root` (a run's `checkpoints/`), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_FOLDER.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (or an export), or a run folder's latest checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CameoError(f"{path}: no such run or checkpoint folder")
    if (path / PROGRESS).is_file() and (path / BACKBONE).is_dir():
        return path
    folders = list_checkpoints(path / CHECKPOINTS)
    if not folders:
        raise CameoError(f"{path}: neither a checkpoint folder nor a run folder with checkpoints")
    return folders[-1]


def run_of(checkpoint: Path) -> Path | None:
    """The run folder holding `checkpoint`; None for a checkpoint outside one (an export)."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else None


def resolve_resume(output: Path, *, overwrite: bool, resume: str | None) -> Path | None:
    """Check `output` against --overwrite/--resume; return the checkpoint to resume from.

    Changes nothing on disk, so every process can run it.
    """
    output = Path(output)
    if resume is not None and overwrite:
        raise CameoError("--resume and --overwrite exclude each other")
    if resume is not None:
        if resume == "latest":
            folders = list_checkpoints(output / CHECKPOINTS)
            if not folders:
                raise CameoError(f"{output}: --resume latest, but it holds no checkpoint")
            return folders[-1]
        return resolve_checkpoint(resume)
    if output.exists() and not overwrite and (not output.is_dir() or any(output.iterdir())):
        raise CameoError(
            f"{output}: output folder exists and is not empty "
            "(pass --overwrite to replace it or --resume latest to continue it)"
        )
    return None


def reset_run_dir(output: Path) -> None:
    """Delete an existing run for --overwrite (main process only)."""
    if output.is_dir():
        shutil.rmtree(output)
    elif output.exists():
        output.unlink()


def create_run_dir(output: Path) -> None:
    """Create the folder tree of a run (idempotent)."""
    for sub in ("", CHECKPOINTS, TENSORBOARD, SAMPLES):
        (output / sub).mkdir(parents=True, exist_ok=True)


def write_meta(
    output: Path,
    command: list[str],
    num_processes: int,
    resumed_from: Path | None,
    validation: dict | None = None,
) -> None:
    """meta.json: cameo version, git commit of the source tree (if any), command line, and
    what validation scores (`validation`: its dataset, split and scenes).

    A resumed run keeps the original entries and appends its own to `resumes`.
    """
    current = {
        "cameo_version": __version__,
        "git_commit": _git_commit(),
        "command": command,
        "python": sys.version.split()[0],
        "num_processes": num_processes,
        **({"validation": validation} if validation is not None else {}),
    }
    path = output / META
    if resumed_from is not None and path.is_file():
        meta = read_json(path)
        meta.setdefault("resumes", []).append({**current, "from": str(resumed_from)})
    else:
        meta = current
    write_json(path, meta, indent=1)


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
