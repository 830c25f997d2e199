"""A run's `metrics.jsonl`: one JSON object per line, `{"step": n, name: value|null, ...}`
(a value that was not finite is null). The trainer appends; every reader goes through
`read_metrics`, with one policy for a bad line: a last line cut mid-write is dropped, any
other bad line is a CameoError naming the file and the line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cameo_cli.errors import CameoError
from cameo_cli.files import read_json_lines, write_text
from cameo_cli.run_folder.layout import METRICS


def read_metrics(run: Path, *, required: bool = True) -> list[dict[str, Any]]:
    """The records of `run`'s metrics file in file order; a missing file is a CameoError,
    or no records when not `required`."""
    path = Path(run) / METRICS
    if not path.is_file():
        if required:
            raise CameoError(f"{run}: not a training run (no {METRICS})")
        return []
    records = read_json_lines(path, "metrics file")
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise CameoError(f"{path}:{number}: not a metrics line (an object with a step)")
    return records


def append_metrics(run: Path, step: int, values: dict[str, float]) -> dict[str, float | None]:
    """Append one line for `step`; return the values as written (None where not finite)."""
    clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}
    with open(Path(run) / METRICS, "a") as handle:
        handle.write(json.dumps({"step": step, **clean}) + "\n")
    return clean


def truncate_metrics(run: Path, after_step: int) -> None:
    """Drop lines logged after `after_step` (a resumed run repeats those steps); a last line
    cut mid-write is dropped too."""
    path = Path(run) / METRICS
    if not path.is_file():
        return
    kept = [record for record in read_metrics(run) if record["step"] <= after_step]
    write_text(path, "".join(json.dumps(record) + "\n" for record in kept))
