"""The run folder: config.yaml, meta.json, metrics, TensorBoard logs, samples, checkpoints."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from cameo_cli import __version__
from cameo_cli.checkpoints import CHECKPOINTS, resolve_checkpoint
from cameo_cli.checkpoints import METRICS as METRICS  # the trainer's path to it
from cameo_cli.errors import CameoError
from cameo_cli.io import read_json, write_json
from cameo_cli.train.checkpoint import CheckpointManager

CONFIG = "config.yaml"
META = "meta.json"
TENSORBOARD = "tensorboard"
SAMPLES = "samples"


def resolve_resume(output: Path, *, overwrite: bool, resume: str | None) -> Path | None:
    """Check `output` against --overwrite/--resume; return the checkpoint to resume from.

    Changes nothing on disk, so every process can run it.
    """
    output = Path(output)
    if resume is not None and overwrite:
        raise CameoError("--resume and --overwrite exclude each other")
    if resume is not None:
        if resume == "latest":
            latest = CheckpointManager(output / CHECKPOINTS, keep=0).latest()
            if latest is None:
                raise CameoError(f"{output}: --resume latest, but it holds no checkpoint")
            return latest
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
