"""Experiment trackers through accelerate: scalars and validation images reach TensorBoard
and MLflow (a local file store), a resumed run continues its MLflow run; W&B offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cameo_cli.config import load_recipe
from cameo_cli.errors import CameoError
from cameo_cli.train.loop import run_training


def _recipe(dataset: Path, steps: int, trackers: str):
    return load_recipe(
        "quickstart-cpu",
        [
            f"data.dataset={dataset}",
            f"train.steps={steps}",
            f"train.trackers={trackers}",
            "train.log_every=1",
            "train.validate_every=2",
            "train.checkpoint_every=2",
            "train.batch_size=1",
            "sample.steps=2",
        ],
    )


def test_tensorboard_and_mlflow_get_scalars_and_images(synthetic_dataset, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    run_training(_recipe(synthetic_dataset, 2, "[tensorboard,mlflow]"), run)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2]  # metrics.jsonl is kept

    events = EventAccumulator(str(run / "tensorboard" / "cameo"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]
    assert [e.step for e in events.Scalars("val/psnr")] == [2]
    assert [e.step for e in events.Images("val/samples")] == [2]

    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    client = MlflowClient((run / "mlruns").resolve().as_uri())
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]
    assert client.get_run(run_id).data.params["train.steps"] == "2"
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any("val" in path for path in images), images

    recipe = _recipe(synthetic_dataset, 3, "[tensorboard,mlflow]")
    run_training(recipe, run, resume="latest")
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]


def test_wandb_offline(synthetic_dataset, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    run_training(_recipe(synthetic_dataset, 2, "[wandb]"), run)
    assert json.loads((run / "trackers.json").read_text())["wandb"]
    assert list((run / "wandb").glob("offline-run-*"))


def test_unknown_and_missing_trackers_are_user_errors(monkeypatch):
    message = r"train.trackers=\[neptune\]: must be a list of tensorboard, wandb, mlflow"
    with pytest.raises(CameoError, match=message):
        load_recipe("quickstart-cpu", ["train.trackers=[neptune]"])
    import importlib.util

    from cameo_cli.train.metrics import check_trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(CameoError, match=r"wandb needs the package \(pip install wandb\)"):
        check_trackers(["tensorboard", "wandb"])
