"""Small-scale reproduction of CAMEO's findings on the built-in synthetic scenes, with cameo.

Trains the `repro-cpu-*` recipes through `cameo train` (the baseline and CAMEO with several
seeds, then CAMEO with official joint targets and the paper's ablations with one seed), then
measures with cameo's own jobs and writes `OUT/report.json` and a table:

(a) where correspondence lives: `cameo diagnose` of every layer of each baseline seed and of
    CAMEO seed 0;
(b) the baseline's held-out precision rising with training, and its correlation with the
    held-out PSNR over validations (Pearson and Spearman, per seed);
(c) steps to the baseline's best held-out value, CAMEO against the baseline: `cameo compare`
    (mean over seeds, ratio with a bootstrap 95 % interval);
(d) the ablations at one step: held-out PSNR, one-step PSNR, denoising loss and precision.

Every stage is resumable: a finished run is skipped, an interrupted one resumes from its last
checkpoint, so the same command continues a study after a stop. Run it in the background:

    nohup python benchmarks/reproduction.py --out runs/reproduction > repro.log 2>&1 &

Runs go `--jobs` at a time, each on one thread (OMP_NUM_THREADS=1): on a 2-core machine two
single-threaded runs train more samples per second than one run on both cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cameo_cli.io import read_json, read_json_lines, save_with, write_json

CORE = ("baseline", "cameo")  # trained with every seed
# seed 0 only
ABLATIONS = ("cameo-joint", "layer2", "layer6", "no-head", "monotone-head", "l1", "no-mask")
ABLATION_METRICS = (
    "val/psnr",
    "val/psnr_x0",
    "val/denoise_t500",
    "val/precision",
    "val/precision_head",
)
console = Console()


@dataclass(frozen=True)
class Job:
    method: str
    seed: int
    steps: int

    @property
    def name(self) -> str:
        return f"{self.method}-seed{self.seed}"

    @property
    def recipe(self) -> str:
        return f"repro-cpu-{self.method}"


def cameo(*args: str) -> list[str]:
    return [sys.executable, "-m", "cameo_cli", *args]


def finished(run: Path, steps: int) -> bool:
    return (run / "checkpoints" / f"step-{steps:06d}").is_dir()


def train_command(job: Job, data: Path, run: Path) -> list[str]:
    command = cameo("train", "--recipe", job.recipe, "--dataset", str(data))
    command += ["--output", str(run), "--steps", str(job.steps), "--set", f"train.seed={job.seed}"]
    if (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step-*")):
        return command + ["--resume", "latest"]
    return command + ["--overwrite"]  # a run folder without a checkpoint starts afresh


def train_all(jobs: list[Job], data: Path, out: Path, parallel: int) -> dict[str, float]:
    """Train every unfinished job, `parallel` at a time; returns wall seconds per job run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    todo = [job for job in jobs if not finished(out / "runs" / job.name, job.steps)]
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    seconds: dict[str, float] = {}
    while todo or running:
        while todo and len(running) < parallel:
            job = todo.pop(0)
            log = (out / "logs" / f"{job.name}.log").open("a")
            command = train_command(job, data, out / "runs" / job.name)
            console.print(f"[bold]start[/] {job.name}: {' '.join(command[2:])}")
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[job.name] = (process, time.monotonic())
        time.sleep(5)
        for name, (process, started) in list(running.items()):
            if process.poll() is None:
                continue
            del running[name]
            seconds[name] = time.monotonic() - started
            state = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
            console.print(f"[bold]{state}[/] {name} in {seconds[name] / 60:.1f} min")
    return seconds


def compare(out: Path, seeds: int) -> dict:
    """(c): `cameo compare` of the core methods, seeds as bands."""
    runs = [str(out / "runs" / f"{m}-seed{s}") for m in CORE for s in range(seeds)]
    groups = [arg for m in CORE for arg in ("--group", f"{m}={m}-seed*")]
    command = cameo("compare", *runs, *groups, "--baseline", "baseline")
    subprocess.run(command + ["--out", str(out / "compare"), "--overwrite"], check=True)
    return read_json(out / "compare" / "compare.json")


def diagnose(out: Path, data: Path, run: str) -> dict:
    """(a): every layer's attention precision at the run's last checkpoint (with diagnose's
    chance, shuffled keys, about 1/hw for `exact`, since layers differ in grid), and the
    watched layer over its checkpoints."""
    folder = out / f"diagnose-{run}"
    command = cameo("diagnose", "--backbone", "cat3d", "--run", str(out / "runs" / run))
    command += ["--dataset", str(data), "--out", str(folder), "--overwrite", "--no-recommend"]
    subprocess.run(command, check=True)
    diagnosis = read_json(folder / "diagnose.json")
    layers = [
        {
            "layer": entry["layer"],
            "grid": entry["grid"],
            "multiview": entry["multiview"],
            "chance_exact": entry["chance"]["exact"],
            **entry["attention"]["precision"],
            "rows": entry["attention"]["rows"],
        }
        for entry in diagnosis["layers"]
    ]
    keys = ("step", "recommended_layer", "over_training")
    return {"layers": layers, **{key: diagnosis.get(key) for key in keys}}


def held_out(run: Path) -> dict[str, dict[int, float]]:
    """metric -> {step: value} of a run's `val/*` lines."""
    curves: dict[str, dict[int, float]] = {}
    for line in read_json_lines(run / "metrics.jsonl"):
        for key, value in line.items():
            if key.startswith("val/"):
                curves.setdefault(key, {})[int(line["step"])] = float(value)
    return curves


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(float)


def correlations(run: Path, precision: str, quality: str) -> dict:
    """(b): Pearson and Spearman correlation of `precision` and `quality` over validations."""
    curves = held_out(run)
    steps = sorted(set(curves[precision]) & set(curves[quality]))
    p = np.array([curves[precision][s] for s in steps])
    q = np.array([curves[quality][s] for s in steps])
    result = {"steps": steps, precision: p.tolist(), quality: q.tolist()}
    if len(steps) > 2 and p.std() > 0 and q.std() > 0:
        result["pearson"] = float(np.corrcoef(p, q)[0, 1])
        result["spearman"] = float(np.corrcoef(_ranks(p), _ranks(q))[0, 1])
    return result


def ablation_table(out: Path, jobs: list[Job], step: int) -> dict[str, dict[str, float]]:
    """(d): the held-out metrics of every seed-0 run at `step`."""
    table = {}
    for job in jobs:
        run = out / "runs" / job.name
        if not (run / "metrics.jsonl").is_file():
            continue
        curves = held_out(run)
        table[job.method] = {
            m: curves[m][step] for m in ABLATION_METRICS if step in curves.get(m, {})
        }
    return table


def plot_precision_vs_quality(correlation: dict, path: Path) -> None:
    """(b) as a picture: every validation of every run, precision against PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, metric in zip(axes, ("val/psnr", "val/psnr_x0"), strict=True):
        for run, pairs in correlation.items():
            values = pairs[metric]
            style = "o-" if run.startswith("baseline") else "s--"
            axis.plot(values["val/precision"], values[metric], style, markersize=3, label=run)
        axis.set_xlabel("val/precision (head-averaged attention, exact token)")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    try:
        save_with(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    finally:
        plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduction"))
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the baseline and CAMEO")
    parser.add_argument("--steps", type=int, default=400, help="steps of the seeded runs")
    parser.add_argument("--ablation-steps", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    parser.add_argument("--report-only", action="store_true", help="measure the runs as they are")
    args = parser.parse_args()
    out, data = args.out, args.out / "data"
    started = time.monotonic()
    # seed 0 of both methods first, then the ablations, then the other seeds
    core = [Job(m, s, args.steps) for s in range(args.seeds) for m in CORE]
    ablations = [Job(m, 0, args.ablation_steps) for m in ABLATIONS]
    jobs = core[:2] + ablations + core[2:]
    if not args.report_only:
        subprocess.run(cameo("prepare", "synthetic", "--out", str(data)), check=True)
        seconds = train_all(jobs, data, out, args.jobs)
        times = read_json(out / "times.json") if (out / "times.json").is_file() else {}
        write_json(out / "times.json", {**times, **seconds})
    report = {
        "command": " ".join(sys.argv),
        "runs": {job.name: finished(out / "runs" / job.name, job.steps) for job in jobs},
        "train_seconds": read_json(out / "times.json") if (out / "times.json").is_file() else {},
        "a_layers": {
            run: diagnose(out, data, run)
            for run in [f"baseline-seed{s}" for s in range(args.seeds)] + ["cameo-seed0"]
        },
        "b_precision_vs_psnr": {
            f"{m}-seed{s}": {
                metric: correlations(out / "runs" / f"{m}-seed{s}", precision, metric)
                for precision, metric in (
                    ("val/precision", "val/psnr"),
                    ("val/precision", "val/psnr_x0"),
                )
            }
            for m in CORE
            for s in range(args.seeds)
        },
        "c_compare": compare(out, args.seeds),
        "d_ablations": ablation_table(
            out, [Job("baseline", 0, 0), Job("cameo", 0, 0), *ablations], args.ablation_steps
        ),
        "report_seconds": time.monotonic() - started,
    }
    write_json(out / "report.json", report)
    plot_precision_vs_quality(report["b_precision_vs_psnr"], out / "precision_vs_psnr.png")
    table = Table(title=f"ablations at step {args.ablation_steps} (seed 0)")
    table.add_column("method")
    for metric in ABLATION_METRICS:
        table.add_column(metric, justify="right")
    for method, values in report["d_ablations"].items():
        cells = (f"{values[m]:.4f}" if m in values else "-" for m in ABLATION_METRICS)
        table.add_row(method, *cells)
    console.print(table)
    for run, diagnosis in report["a_layers"].items():
        layers = Table(title=f"{run}: attention precision by layer (step {diagnosis['step']})")
        for column in ("layer", "grid", "multiview", "exact", "chance", "tokens", "pixels"):
            layers.add_column(column, justify="right")
        for entry in diagnosis["layers"]:
            layers.add_row(
                str(entry["layer"]),
                "x".join(map(str, entry["grid"])),
                "yes" if entry["multiview"] else "no",
                *(f"{entry[key]:.3f}" for key in ("exact", "chance_exact", "tokens", "pixels")),
            )
        console.print(layers)
    for run, pairs in report["b_precision_vs_psnr"].items():
        for metric, values in pairs.items():
            pearson, spearman = (values.get(k, float("nan")) for k in ("pearson", "spearman"))
            console.print(
                f"{run}: corr(val/precision, {metric}): Pearson {pearson:.3f}, "
                f"Spearman {spearman:.3f}"
            )
    console.print(f"report: {out / 'report.json'}; curves: {out / 'compare'}")


if __name__ == "__main__":
    main()
