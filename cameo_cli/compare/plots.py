"""Matplotlib curves of a comparison (PNG, written atomically)."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cameo_cli.files import save_figure  # noqa: E402

LINE_STYLES = ("--", ":", "-.")


def metric_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    metric: str,
    path: Path,
    lines: dict[str, float],
) -> None:
    """One line per method (its mean over seeds) with the seeds' range as a band, and the
    reference `lines` (name -> value) as dashed horizontal lines."""
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for (name, value), style in zip(lines.items(), itertools.cycle(LINE_STYLES)):
        axis.axhline(value, color="0.4", linestyle=style, linewidth=1, label=f"{name} {value:.2f}")
    for name, (steps, values, mean) in curves.items():
        (line,) = axis.plot(
            steps, mean, marker="o", markersize=3, label=f"{name} (n={len(values)})"
        )
        if len(values) > 1:
            axis.fill_between(
                steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2
            )
    axis.set_xlabel("step")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(path, figure)
