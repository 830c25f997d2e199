"""Training metrics: one JSON object per line in metrics.jsonl, mirrored to TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from cameo_cli.io import read_json_lines, write_text


class MetricsLogger:
    """Appends `{"step": n, name: value, ...}` lines; use on the main process only."""

    def __init__(
        self, metrics_file: Path, tensorboard_dir: Path, resumed_at: int | None = None
    ) -> None:
        """`resumed_at`: the step a resumed run restarts from; later events are discarded."""
        self.metrics_file = Path(metrics_file)
        if resumed_at is not None:
            truncate_metrics(self.metrics_file, resumed_at)
        purge = None if resumed_at is None else resumed_at + 1
        self.writer = SummaryWriter(str(tensorboard_dir), purge_step=purge)

    def log(self, step: int, values: dict[str, float]) -> None:
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}
        with open(self.metrics_file, "a") as handle:
            handle.write(json.dumps({"step": step, **clean}) + "\n")
        for name, value in clean.items():
            if value is not None:
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def truncate_metrics(metrics_file: Path, after_step: int) -> None:
    """Drop lines logged after `after_step` (a resumed run repeats those steps); a last line
    cut mid-write is dropped too."""
    if not metrics_file.is_file():
        return
    kept = [
        record
        for record in read_json_lines(metrics_file, "metrics file")
        if record.get("step", 0) <= after_step
    ]
    write_text(metrics_file, "".join(json.dumps(record) + "\n" for record in kept))
