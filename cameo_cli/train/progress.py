"""The rich progress bar of a training run (shown on the main process only)."""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """Steps done / total, steps per second, ETA and the latest loss terms."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"),
            disable=not enabled,
            transient=False,
        )
        self.task = self.progress.add_task(
            "train", total=total, completed=start, rate="", losses=""
        )
        self.start_step = start
        self.start_time = time.perf_counter()

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        self.start_time = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def steps_per_second(self, step: int) -> float:
        elapsed = time.perf_counter() - self.start_time
        return (step - self.start_step) / elapsed if elapsed > 0 else 0.0

    def update(self, step: int, losses: dict[str, float]) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in losses.items())
        rate = f"{self.steps_per_second(step):.2f} it/s"
        self.progress.update(self.task, completed=step, rate=rate, losses=text)
