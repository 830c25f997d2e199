"""The parts of a training run that own their cadence, as torchtitan splits its trainer.

`Cadence` says when a step is due (every N steps and at the last one); the checkpointer,
the validator and the logger each hold one and decide for themselves (`maybe_save`,
`should_validate`, `should_log`), so the loop only steps and asks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cameo_cli.train.metrics import MetricsLogger


@dataclass(frozen=True)
class Cadence:
    """Due every `every` optimizer steps and at the run's `last` step."""

    every: int
    last: int

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last


class Checkpointer:
    """Saves through `save(step)` when the cadence says so; remembers the last folder."""

    def __init__(self, cadence: Cadence, save: Callable[[int], Path]) -> None:
        self.cadence = cadence
        self._save = save
        self.last_saved: Path | None = None

    def save(self, step: int) -> Path:
        self.last_saved = self._save(step)
        return self.last_saved

    def maybe_save(self, step: int) -> Path | None:
        """Save at a due step; return the checkpoint folder, or None."""
        return self.save(step) if self.cadence.due(step) else None


class Validator:
    """Runs `validate(step)` at due steps."""

    def __init__(self, cadence: Cadence, validate: Callable[[int], None]) -> None:
        self.cadence = cadence
        self.validate = validate

    def should_validate(self, step: int) -> bool:
        return self.cadence.due(step)

    def maybe_validate(self, step: int) -> None:
        if self.should_validate(step):
            self.validate(step)


class TrainLogger:
    """Sums loss terms over micro-batches; at due steps the caller logs their averages.

    `metrics` is None on processes other than the main one (they still average, so every
    process takes part in the cross-process reduction).
    """

    def __init__(self, cadence: Cadence, metrics: MetricsLogger | None) -> None:
        self.cadence = cadence
        self.metrics = metrics
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0

    def add(self, terms: dict[str, float]) -> None:
        for name, value in terms.items():
            self._sums[name] += value
        self._count += 1

    def averages(self) -> dict[str, float]:
        """Mean of each term since the last logged step."""
        return {name: value / self._count for name, value in self._sums.items()}

    def should_log(self, step: int) -> bool:
        return self.cadence.due(step)

    def log(self, step: int, values: dict[str, float]) -> None:
        """Write `values` (main process) and start a new averaging window."""
        if self.metrics is not None:
            self.metrics.log(step, values)
        self._sums.clear()
        self._count = 0
