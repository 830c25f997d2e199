"""`cameo compare`: held-out metrics of several runs against steps, grouped into methods.

Every run folder's `metrics.jsonl` holds the held-out metrics its trainer logged (the names
starting with `val/`). Runs are grouped into methods: by `--group NAME=GLOB` patterns, or by
their recipes (runs whose resolved recipes differ only in `train.seed` and the dataset path
are seeds of one method). The seeds of a method must log the same metrics; methods may
differ (only CAMEO logs its projection head's precision). For each metric:

- a PNG of the mean curve over its seeds of every method that logs it, with the seeds' range
  as a band;
- where the baseline logs it, the steps each method needs to reach the baseline's best value
  (of the baseline's mean curve), the baseline's own steps to that value, and their ratio,
  with a bootstrap confidence interval over seeds (seeds resampled with replacement within
  every method).

Lower is better for metrics whose name holds "loss" or "denoise"; higher otherwise.

Reference lines (`val/line_<line>_<measure>`, e.g. `val/line_copy_psnr`, logged once by the
trainer) are not curves: each is the mean of its logged values over every run that logged it
(per method too, in `compare.json`'s `reference_lines`), drawn as a horizontal line on the
plots of the metrics of its measure (`psnr`: `val/psnr`, `val/psnr_x0`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cameo_cli.config import load_recipe, recipe_to_dict
from cameo_cli.errors import CameoError
from cameo_cli.files import staged_folder, write_csv, write_json
from cameo_cli.run_folder.layout import CONFIG, METRICS
from cameo_cli.run_folder.metrics import read_metrics

HELD_OUT_PREFIX = "val/"
LINE_PREFIX = "val/line_"
IGNORED_KEYS = ("train.seed", "data.dataset")  # what may differ between seeds of a method
BOOTSTRAP_SAMPLES = 1000


@dataclass
class RunCurves:
    """The held-out metrics of one run: name -> (steps, values), steps increasing."""

    run: Path
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    recipe: dict
    lines: dict[str, float] = field(default_factory=dict)  # reference line -> mean value


@dataclass
class Method:
    name: str
    runs: list[RunCurves] = field(default_factory=list)

    def mean_curve(self, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps every seed logged, [seeds, steps] values) and the mean over seeds."""
        steps = _common_steps([run.curves[metric][0] for run in self.runs])
        if steps.size == 0:
            raise CameoError(
                f"method '{self.name}': its runs logged {metric} at no common step "
                f"({', '.join(str(run.run) for run in self.runs)})"
            )
        values = np.stack([_values_at(run.curves[metric], steps) for run in self.runs])
        return steps, values, values.mean(axis=0)


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or "denoise" in metric


def _common_steps(step_lists: list[np.ndarray]) -> np.ndarray:
    common = step_lists[0]
    for steps in step_lists[1:]:
        common = np.intersect1d(common, steps)
    return common


def _values_at(curve: tuple[np.ndarray, np.ndarray], steps: np.ndarray) -> np.ndarray:
    at = {int(s): v for s, v in zip(*curve, strict=True)}
    return np.array([at[int(s)] for s in steps])


def read_run(run: Path) -> RunCurves:
    """A run folder's held-out curves and resolved recipe (CameoError if it has none)."""
    points: dict[str, dict[int, float]] = {}
    for record in read_metrics(run):
        for name, value in record.items():
            if name.startswith(HELD_OUT_PREFIX) and value is not None:
                points.setdefault(name, {})[record["step"]] = float(value)
    lines = {
        name: float(np.mean(list(points.pop(name).values())))
        for name in list(points)
        if name.startswith(LINE_PREFIX)
    }
    if not points:
        raise CameoError(
            f"{run / METRICS}: no held-out metrics ({HELD_OUT_PREFIX}*) were logged; "
            "the run validates every train.validate_every steps"
        )
    curves = {
        name: (np.array(sorted(values)), np.array([values[s] for s in sorted(values)]))
        for name, values in points.items()
    }
    recipe = recipe_to_dict(load_recipe(str(run / CONFIG)))
    return RunCurves(run, curves, recipe, lines)


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value if not isinstance(value, list) else tuple(value)
    return flat


def group_runs(runs: list[RunCurves], patterns: list[tuple[str, str]]) -> list[Method]:
    """Methods from `patterns` [(name, glob)] matched on each run's path (or its folder
    name), else from the recipes; every run must land in exactly one method."""
    if patterns:
        methods = {name: Method(name) for name, _ in patterns}
        for run in runs:
            names = [
                name
                for name, glob in patterns
                if fnmatch.fnmatch(str(run.run), glob) or fnmatch.fnmatch(run.run.name, glob)
            ]
            if len(names) != 1:
                found = ", ".join(names) or "none"
                raise CameoError(f"{run.run}: matches {found} of the --group patterns, not one")
            methods[names[0]].runs.append(run)
        empty = [name for name, method in methods.items() if not method.runs]
        if empty:
            raise CameoError(f"--group {', '.join(empty)}: no run matches")
        return list(methods.values())
    flat = [_flatten(run.recipe) for run in runs]
    for entry in flat:
        for key in IGNORED_KEYS:
            entry.pop(key, None)
    differing = sorted(
        key for key in set().union(*flat) if len({repr(entry.get(key)) for entry in flat}) > 1
    )
    by_name: dict[str, Method] = {}
    for run, entry in zip(runs, flat, strict=True):
        name = ", ".join(f"{key}={entry.get(key)}" for key in differing) or "all runs"
        by_name.setdefault(name, Method(name)).runs.append(run)
    return list(by_name.values())


def _reach_step(steps: np.ndarray, mean: np.ndarray, target: float, lower: bool) -> float:
    reached = mean <= target if lower else mean >= target
    return float(steps[np.argmax(reached)]) if reached.any() else float("nan")


def steps_to_baseline_best(
    baseline: Method, method: Method, metric: str, rng: np.random.Generator
) -> dict:
    """Steps of `method` and of `baseline` to the baseline's best mean value of `metric`,
    their ratio and a 95 % bootstrap interval of the ratio over seeds."""
    lower = lower_is_better(metric)

    def measure(base_values, base_steps, values, steps) -> tuple[float, float, float]:
        base_mean = base_values.mean(axis=0)
        best = base_mean.min() if lower else base_mean.max()
        base_step = _reach_step(base_steps, base_mean, best, lower)
        step = _reach_step(steps, values.mean(axis=0), best, lower)
        return best, base_step, step

    base_steps, base_values, _ = baseline.mean_curve(metric)
    steps, values, _ = method.mean_curve(metric)
    best, base_step, step = measure(base_values, base_steps, values, steps)
    ratios = []
    for _ in range(BOOTSTRAP_SAMPLES):
        base_pick = base_values[rng.integers(0, len(base_values), len(base_values))]
        pick = values[rng.integers(0, len(values), len(values))]
        _, b, m = measure(base_pick, base_steps, pick, steps)
        ratios.append(m / b if b > 0 else np.nan)
    ratios_array = np.array(ratios)
    reached = np.isfinite(ratios_array)
    low, high = (
        np.percentile(ratios_array[reached], [2.5, 97.5]) if reached.any() else (np.nan, np.nan)
    )
    ratio = step / base_step if base_step > 0 else float("nan")
    return {
        "metric": metric,
        "method": method.name,
        "baseline": baseline.name,
        "baseline_best": best,
        "baseline_steps": base_step,
        "steps": step,
        "ratio": ratio,
        "ratio_ci95": [float(low), float(high)],
        "bootstrap_reached": float(reached.mean()),
        "seeds": len(method.runs),
        "baseline_seeds": len(baseline.runs),
    }


def _pick_baseline(methods: list[Method], name: str | None) -> Method:
    if name is not None:
        for method in methods:
            if method.name == name:
                return method
        known = "; ".join(m.name for m in methods)
        raise CameoError(f"--baseline '{name}' is not one of the methods: {known}")
    for method in methods:
        if all(run.recipe["alignment"]["method"] == "none" for run in method.runs):
            return method
    return methods[0]


def _check_metrics(methods: list[Method]) -> None:
    """Every seed of a method must log the same held-out metrics (methods may differ: only
    CAMEO logs its projection head's precision)."""
    for method in methods:
        names = set().union(*(run.curves for run in method.runs))
        for run in method.runs:
            missing = sorted(names - set(run.curves))
            if missing:
                raise CameoError(
                    f"{run.run}: logged no {', '.join(missing)} (which other runs of method "
                    f"'{method.name}' logged); compare runs with the same held-out metrics"
                )


def _logs(method: Method, metric: str) -> bool:
    return metric in method.runs[0].curves


def reference_lines(methods: list[Method]) -> dict[str, dict]:
    """Line name -> {"value": mean over every run that logged it, "methods": {name: mean over
    its runs}}."""
    names = sorted(set().union(*(run.lines for m in methods for run in m.runs)))
    lines = {}
    for name in names:
        per_method = {
            m.name: float(np.mean([run.lines[name] for run in m.runs if name in run.lines]))
            for m in methods
            if any(name in run.lines for run in m.runs)
        }
        values = [run.lines[name] for m in methods for run in m.runs if name in run.lines]
        lines[name] = {"value": float(np.mean(values)), "methods": per_method}
    return lines


def lines_on(metric: str, lines: dict[str, dict]) -> dict[str, float]:
    """The lines drawn on `metric`'s plot, by short name: those of its measure (`val/psnr_x0`
    and `val/psnr` take `val/line_*_psnr`)."""
    measure = metric.removeprefix(HELD_OUT_PREFIX).split("_")[0]
    drawn = {}
    for name, line in lines.items():
        label, _, line_measure = name.removeprefix(LINE_PREFIX).rpartition("_")
        if line_measure == measure:
            drawn[label] = line["value"]
    return drawn


def compare_runs(
    run_dirs: list[Path],
    out: Path,
    *,
    groups: list[tuple[str, str]],
    baseline: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> dict:
    """Write curves (PNG), `compare.json` and `compare.csv` into `out`; return the result."""
    from cameo_cli.compare.plots import metric_curves

    if len(run_dirs) < 2:
        raise CameoError("cameo compare needs at least two runs")
    runs = [read_run(Path(run)) for run in run_dirs]
    methods = group_runs(runs, groups)
    if len(methods) < 2:
        raise CameoError(
            "all runs form one method (their recipes differ only in seed): "
            "group them with --group NAME=GLOB"
        )
    _check_metrics(methods)
    metrics = sorted(set().union(*(run.curves for run in runs)))
    base = _pick_baseline(methods, baseline)
    rng = np.random.default_rng(seed)
    rows = [
        steps_to_baseline_best(base, method, metric, rng)
        for metric in metrics
        if _logs(base, metric)
        for method in methods
        if _logs(method, metric)
    ]
    if all(row["method"] == base.name for row in rows):
        raise CameoError(
            f"the baseline '{base.name}' shares no held-out metric with the other methods"
        )
    lines = reference_lines(methods)
    result = {
        "baseline": base.name,
        "methods": {m.name: [str(run.run) for run in m.runs] for m in methods},
        "metrics": metrics,
        "steps_to_baseline_best": rows,
        "reference_lines": lines,
    }
    header = ["metric", "method", "baseline", "baseline_best", "baseline_steps", "steps",
              "ratio", "ratio_ci95_low", "ratio_ci95_high", "seeds"]  # fmt: skip
    table = [header] + [
        [
            r["metric"],
            r["method"],
            r["baseline"],
            r["baseline_best"],
            r["baseline_steps"],
            r["steps"],
            r["ratio"],
            *r["ratio_ci95"],
            r["seeds"],
        ]  # fmt: skip
        for r in rows
    ]
    with staged_folder(out, overwrite) as staging:
        for metric in metrics:
            curves = {m.name: m.mean_curve(metric) for m in methods if _logs(m, metric)}
            path = staging / f"{metric.replace('/', '_')}.png"
            metric_curves(curves, metric, path, lines_on(metric, lines))
        write_json(staging / "compare.json", result)
        write_csv(staging / "compare.csv", table)
    return result
