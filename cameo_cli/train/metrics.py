"""Training metrics: one JSON object per line in metrics.jsonl (the tool-independent record),
mirrored to the experiment trackers of `train.trackers` through accelerate
(`Accelerator(log_with=...)`): TensorBoard, Weights & Biases, MLflow.

Trackers write where they are told: TensorBoard to `RUN/tensorboard/cameo/`, MLflow to
`$MLFLOW_TRACKING_URI` or else a local file store `RUN/mlruns`, W&B to `RUN/wandb` (online,
or offline with `WANDB_MODE=offline`). The run ids of MLflow and W&B are kept in
`RUN/trackers.json`, so `--resume` continues the same tracker run; TensorBoard drops the
events after the resumed step.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator

from cameo_cli.config import Recipe, recipe_to_dict
from cameo_cli.errors import CameoError
from cameo_cli.files import read_json, write_json
from cameo_cli.run_folder.layout import MLRUNS, TRACKER_IDS, WANDB
from cameo_cli.run_folder.metrics import append_metrics, truncate_metrics

PROJECT = "cameo"  # TensorBoard subfolder, MLflow experiment, W&B project
# tracker -> (module that must be importable, what to install)
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow-skinny"),
}


def check_trackers(names: list[str]) -> None:
    """Every tracker installed (a CameoError naming the package otherwise)."""
    for name in names:
        module, package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise CameoError(f"train.trackers: {name} needs the package (pip install {package})")


def start_trackers(
    accelerator: Accelerator, recipe: Recipe, output: Path, resumed_at: int | None
) -> None:
    """Start the trackers of `accelerator` (main process): the recipe as their config, or
    the saved run ids when resuming; then save the ids."""
    names = [str(tracker) for tracker in recipe.train.trackers]
    if not names:
        return
    # only trackers with run ids (mlflow, wandb) write the file: TensorBoard alone has none
    has_ids = resumed_at is not None and (output / TRACKER_IDS).is_file()
    saved = read_json(output / TRACKER_IDS, "tracker ids") if has_ids else {}
    if not isinstance(saved, dict):
        saved = {}
    options: dict[str, dict[str, Any]] = {}
    if "tensorboard" in names and resumed_at is not None:
        options["tensorboard"] = {"purge_step": resumed_at + 1}
    if "mlflow" in names:
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # MLflow 3 refuses file stores unless allowed; a local folder needs no server.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((output / MLRUNS).resolve().as_uri())
        options["mlflow"] = {"run_name": output.name, "run_id": saved.get("mlflow")}
    if "wandb" in names:
        (output / WANDB).mkdir(exist_ok=True)
        run_id = saved.get("wandb")
        options["wandb"] = {"name": output.name, "dir": str(output), "id": run_id}
        if run_id is not None:
            options["wandb"]["resume"] = "allow"
    # A resumed run keeps the config its trackers were given (MLflow refuses changed params,
    # and --resume may raise train.steps).
    config = _flat_config(recipe) if resumed_at is None else None
    accelerator.init_trackers(PROJECT, config=config, init_kwargs=options)
    if not accelerator.is_main_process:
        return
    ids = dict(saved)
    if "mlflow" in names:
        ids["mlflow"] = accelerator.get_tracker("mlflow", unwrap=True).info.run_id
    if "wandb" in names:
        ids["wandb"] = accelerator.get_tracker("wandb", unwrap=True).id
    if ids:
        write_json(output / TRACKER_IDS, ids)


def _flat_config(recipe: Recipe) -> dict[str, Any]:
    """The recipe as `section.key: scalar` (what every tracker's hyperparameters take)."""
    flat = {}
    for section, values in recipe_to_dict(recipe).items():
        for key, value in values.items():
            plain = isinstance(value, int | float | str | bool)
            flat[f"{section}.{key}"] = value if plain else json.dumps(value)
    return flat


class MetricsLogger:
    """Appends `{"step": n, name: value, ...}` lines and logs them to the trackers; use on
    the main process only."""

    def __init__(self, run: Path, accelerator: Accelerator, resumed_at: int | None = None) -> None:
        """`resumed_at`: the step a resumed run restarts from; later lines are discarded."""
        self.run = Path(run)
        self.accelerator = accelerator
        if resumed_at is not None:
            truncate_metrics(self.run, resumed_at)

    def log(self, step: int, values: dict[str, float]) -> None:
        clean = append_metrics(self.run, step, values)
        finite = {name: value for name, value in clean.items() if value is not None}
        if finite:
            self.accelerator.log(finite, step=step)

    def log_image(self, step: int, name: str, image: np.ndarray) -> None:
        """One uint8 [H, W, 3] image to every tracker that takes images."""
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")
            elif tracker.name == "wandb":
                tracker.log_images({name: [image]}, step=step)
            elif tracker.name == "mlflow":
                import mlflow

                mlflow.log_image(image, key=name, step=step)
