"""Behaviour unchanged across refactors: a fixed-seed tiny training run (quick-start recipe,
3 CPU steps, validation at the end, no trackers) logs the same `metrics.jsonl` as the golden
file recorded from main before the layers/config/namespace redesign (issue 22).

Values are compared to 1e-6 relative rather than exactly: the golden file was recorded with
one OpenMP thread, and a different thread count may sum in another order (a last-bit change).
`steps_per_s` is wall-clock time and is left out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "data" / "behaviour_unchanged_metrics.jsonl"
TIMING_FIELDS = {"steps_per_s"}

pytestmark = pytest.mark.slow


def _lines(path: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def test_tiny_run_logs_the_golden_metrics(synthetic_dataset: Path, tmp_path: Path) -> None:
    from cameo_cli.config import load_recipe
    from cameo_cli.train.loop import run_training

    recipe = load_recipe(
        "quickstart-cpu",
        [
            f"data.dataset={synthetic_dataset}",
            "train.steps=3",
            "train.batch_size=2",
            "train.log_every=1",
            "train.validate_every=3",
            "train.checkpoint_every=3",
            "train.trackers=[]",
            "sample.steps=2",
        ],
    )
    run_training(recipe, tmp_path / "run", command=["pytest", "behaviour_unchanged"])
    logged, golden = _lines(tmp_path / "run" / "metrics.jsonl"), _lines(GOLDEN)
    assert [sorted(row) for row in logged] == [sorted(row) for row in golden]
    for got, want in zip(logged, golden, strict=True):
        for key, value in want.items():
            assert math.isclose(got[key], value, rel_tol=1e-6), (got["step"], key)
