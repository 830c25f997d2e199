"""Small-scale reproduction of CAMEO's findings on the built-in synthetic scenes, with cameo.

Prepares training scenes and disjoint held-out scenes, trains the `repro-cpu-*` recipes
through `cameo train` (the baseline and CAMEO with several seeds, then the paper's ablations
with seed 0), optionally from a prior (`--prior DIR`: `backbone.pretrained`), then measures
with cameo's own jobs on the held-out scenes and writes `OUT/report.json` and tables:

(a) where correspondence lives: `cameo diagnose` of every layer of each baseline seed and of
    CAMEO seed 0;
(b) the baseline's held-out precision rising with training, and its correlation with the
    held-out PSNR over validations (Pearson and Spearman, per seed);
(c) steps to the baseline's best held-out value, CAMEO against the baseline: `cameo compare`
    (mean over seeds, ratio with a bootstrap 95 % interval);
(d) the ablations at one step: held-out PSNR, one-step PSNR, denoising loss and precision;
(e) `cameo evaluate` of every baseline and CAMEO run's last checkpoint on the held-out
    evaluation index: sampled PSNR, SSIM and sharpness.
Every PSNR stands beside the reference lines of the validation batch (`val/line_flat_psnr`,
`val/line_copy_psnr`, `val/line_reproject_psnr`: tables and plots) and of the evaluated
views (evaluate's `flat_psnr`, ...).

Every stage is resumable: a finished run is skipped, an interrupted one resumes from its last
checkpoint, so the same command continues a study after a stop. An ablation whose recipe is
not installed is skipped with a note.

    nohup python benchmarks/reproduction.py --out runs/reproduction > repro.log 2>&1 &
    python benchmarks/reproduction.py --device cuda --preset gpu-5min --out runs/gpu-study

Presets (`PRESETS`; --seeds, --steps, --batch, ... override one value): `cpu` is the CPU
study (400 steps x batch 8 = 3,200 samples per run); `cpu-smoke` checks the driver end to end
in minutes; `gpu-5min` is sized for one H100 in about 5 minutes, see `GPU_5MIN`.
Runs go `--jobs` at a time. `--device cpu`: each on one thread (OMP_NUM_THREADS=1, no GPU
visible); on a 2-core machine two single-threaded runs train more samples per second than one
run on both cores. `--device cuda`: all on the one visible GPU (CUDA_VISIBLE_DEVICES as
given), the CPU cores shared among them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from rich.console import Console
from rich.table import Table

from cameo_cli.config import find_recipe
from cameo_cli.errors import CameoError
from cameo_cli.files import read_json, save_figure, write_json
from cameo_cli.run_folder.metrics import read_metrics

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
LINES = ("flat", "copy", "reproject")  # the reference lines (`cameo_cli.reference_lines`)
EVALUATE_METRICS = ("psnr", "ssim", "sharpness", *(f"{line}_psnr" for line in LINES))
console = Console()


@dataclass(frozen=True)
class Preset:
    """A study's size; samples per run = steps x batch."""

    seeds: int  # of the baseline and CAMEO
    steps: int  # of the seeded runs
    ablation_steps: int  # of the seed-0 ablations (a multiple of validate_every)
    batch: int
    validate_every: int
    checkpoint_every: int
    jobs: int  # runs at once
    ablations: tuple[str, ...] = ABLATIONS
    train_scenes: int = 32
    held_out_scenes: int = 16
    frames: int = 16
    sample_steps: int = 20  # DDIM steps of validation and evaluation
    diagnose_scenes: int = 4
    mixed_precision: str = "no"  # train.mixed_precision
    workers: int = 0  # data.workers: loader processes per run


CPU = Preset(seeds=3, steps=400, ablation_steps=300, batch=8, validate_every=50,
             checkpoint_every=100, jobs=2)  # fmt: skip
GPU_5MIN = Preset(seeds=3, steps=640, ablation_steps=640, batch=250, validate_every=80,
                  checkpoint_every=160, jobs=6, ablations=(), train_scenes=128,
                  mixed_precision="bf16", workers=2)  # fmt: skip
"""`gpu-5min`: the baseline and CAMEO, 3 seeds each, 160,000 samples per run (640 steps x
batch 250: 50x the CPU study's 400 x 8), all six runs at once on one H100. The ablations are
left out to stay near 5 minutes; `--ablations NAME,...` adds them (about 40 s each, below).

The estimate, from `benchmarks/gpu_sizing.py` on the 2-core CPU (one thread, batch 8): a
training sample costs 3.5 GFLOP (forward and backward, `torch.utils.flop_counter`; baseline
3.47, CAMEO 3.51), a step dispatches 12,400 (baseline) to 13,300 (CAMEO) aten operations
whatever the batch, a validation 146,000, and loading a sample takes 3.7 ms of one CPU core.
- FLOPs are not the limit: 6 runs x 160,000 samples x 3.5 GFLOP = 3.4 PFLOP, 4 s at the
  H100's dense bf16 peak (about 790 TFLOP/s) and 85 s even at 5 % of it, which is what
  layers of 32 to 128 channels on 16x16 tokens can expect.
- Kernel launches are: each operation is at least one launch. Assumed: one eager process
  dispatches about 8 us per operation (about 9 steps/s alone), and the GPU runs this
  model's tiny kernels back to back at about 3 us each when several processes feed it
  (time-sliced, no MPS): about 330,000 kernels/s in all, so six processes get about 4 steps/s
  each. A run is 640 x 13,000 + 9 x 146,000 = 9.6 M kernels, six runs 57 M: about 175 s.
- Loading as well: 6 x 160,000 samples x 3.7 ms = 3,550 core-seconds, about 220 s on the
  machine's 16 cores (two loader processes per run, `data.workers=2`).
So training takes about 220 s; with preparing 144 scenes (about 30 s), the start of each
process and `cameo evaluate`/`diagnose`/`compare` (about 50 s), about 5 minutes. An
ablation adds a sixth of the training: about 40 s."""
CPU_SMOKE = Preset(seeds=1, steps=2, ablation_steps=2, batch=2, validate_every=1,
                   checkpoint_every=1, jobs=2, ablations=("no-head",), train_scenes=2,
                   held_out_scenes=1, frames=8, sample_steps=2, diagnose_scenes=1)  # fmt: skip
PRESETS = {"cpu": CPU, "gpu-5min": GPU_5MIN, "cpu-smoke": CPU_SMOKE}


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


@dataclass(frozen=True)
class Study:
    """Where a study's files are and how its runs are made."""

    out: Path
    preset: Preset
    device: str  # cpu | cuda
    prior: Path | None

    @property
    def train_data(self) -> Path:
        return self.out / "data" / "train"

    @property
    def held_out(self) -> Path:
        return self.out / "data" / "held-out"

    def run(self, name: str) -> Path:
        return self.out / "runs" / name

    def environment(self) -> dict[str, str]:
        """The processes' environment: cpu, one thread each and no GPU; cuda, the visible
        GPU shared and the CPU cores split among the runs that go at once."""
        if self.device == "cpu":
            threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        else:
            share = str(max(1, (os.cpu_count() or 1) // self.preset.jobs))
            threads = {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share}
        return {**os.environ, **threads}


def cameo(*args: str) -> list[str]:
    return [sys.executable, "-m", "cameo_cli", *args]


def installed(method: str) -> bool:
    """Whether `repro-cpu-<method>` is a shipped recipe; a note when it is not."""
    try:
        find_recipe(Job(method, 0, 0).recipe)
    except CameoError:
        console.print(f"[yellow]skipped[/] {method}: recipe repro-cpu-{method} is not installed")
        return False
    return True


def finished(run: Path, steps: int) -> bool:
    return (run / "checkpoints" / f"step-{steps:06d}").is_dir()


def prepare(study: Study) -> None:
    """Training scenes (seed 0) and held-out scenes (seed 1, split `test`): disjoint."""
    p = study.preset
    for folder, seed, scenes in ((study.train_data, 0, p.train_scenes),
                                 (study.held_out, 1, p.held_out_scenes)):  # fmt: skip
        command = cameo("prepare", "synthetic", "--out", str(folder), "--seed", str(seed))
        command += ["--scenes", str(scenes), "--frames", str(p.frames), "--test-scenes", "0"]
        command += ["--split", "test"] if folder == study.held_out else []
        subprocess.run(command, check=True)


def train_command(study: Study, job: Job) -> list[str]:
    p, run = study.preset, study.run(job.name)
    settings = [
        f"train.seed={job.seed}",
        f"train.batch_size={p.batch}",
        f"train.validate_every={p.validate_every}",
        f"train.checkpoint_every={p.checkpoint_every}",
        f"train.mixed_precision={p.mixed_precision}",
        f"data.workers={p.workers}",
        f"sample.steps={p.sample_steps}",
    ]
    if study.prior is not None:
        settings.append(f"backbone.pretrained={study.prior}")
    settings.append(f"data.validation={study.held_out}")  # its `test` split: held-out scenes
    command = cameo("train", "--recipe", job.recipe, "--dataset", str(study.train_data))
    command += ["--output", str(run), "--steps", str(job.steps)]
    command += [arg for setting in settings for arg in ("--set", setting)]
    if (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step-*")):
        return command + ["--resume", "latest"]
    return command + ["--overwrite"]  # a run folder without a checkpoint starts afresh


def run_all(study: Study, commands: dict[str, list[str]]) -> dict[str, float]:
    """Run the commands `jobs` at a time, each logging to `logs/<name>.log`; returns wall
    seconds per command that succeeded."""
    (study.out / "logs").mkdir(parents=True, exist_ok=True)
    todo = list(commands.items())
    running: dict[str, tuple[subprocess.Popen, float, IO]] = {}
    seconds: dict[str, float] = {}
    while todo or running:
        while todo and len(running) < study.preset.jobs:
            name, command = todo.pop(0)
            log = (study.out / "logs" / f"{name}.log").open("a")
            console.print(f"[bold]start[/] {name}: {' '.join(command[2:])}")
            process = subprocess.Popen(
                command, env=study.environment(), stdout=log, stderr=subprocess.STDOUT
            )
            running[name] = (process, time.monotonic(), log)
        time.sleep(0.5)
        for name, (process, started, log) in list(running.items()):
            if process.poll() is None:
                continue
            del running[name]
            log.close()
            elapsed = time.monotonic() - started
            if process.returncode == 0:
                seconds[name] = elapsed
            state = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
            console.print(f"[bold]{state}[/] {name} in {elapsed / 60:.1f} min")
    return seconds


def compare(study: Study) -> dict:
    """(c): `cameo compare` of the core methods, seeds as bands (reference lines drawn)."""
    runs = [str(study.run(f"{m}-seed{s}")) for m in CORE for s in range(study.preset.seeds)]
    groups = [arg for m in CORE for arg in ("--group", f"{m}={m}-seed*")]
    command = cameo("compare", *runs, *groups, "--baseline", "baseline")
    subprocess.run(command + ["--out", str(study.out / "compare"), "--overwrite"], check=True)
    return read_json(study.out / "compare" / "compare.json")


def diagnose_command(study: Study, run: str) -> list[str]:
    folder = study.out / f"diagnose-{run}"
    command = cameo("diagnose", "--backbone", "cat3d", "--run", str(study.run(run)))
    command += ["--dataset", str(study.held_out), "--out", str(folder), "--overwrite"]
    return command + ["--no-recommend", "--scenes", str(study.preset.diagnose_scenes),
                      "--device", study.device]  # fmt: skip


def diagnosis(study: Study, run: str) -> dict:
    """(a): every layer's attention precision at the run's last checkpoint (with diagnose's
    chance, shuffled keys, about 1/hw for `exact`, since layers differ in grid), and the
    watched layer over its checkpoints."""
    diagnosis = read_json(study.out / f"diagnose-{run}" / "diagnose.json")
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


def evaluate_command(study: Study, run: str) -> list[str]:
    command = cameo("evaluate", "--checkpoint", str(study.run(run)))
    command += ["--dataset", str(study.held_out), "--out", str(study.out / f"evaluate-{run}")]
    command += ["--steps", str(study.preset.sample_steps), "--device", study.device]
    return command + ["--overwrite"]


def evaluation(study: Study, run: str) -> dict[str, float]:
    """(e): the run's mean sampled metrics beside the reference lines' (evaluate's mean)."""
    results = read_json(study.out / f"evaluate-{run}" / "results.json")
    mean = results["mean"]
    return {
        "step": results["config"]["step"],
        **{m: mean[m] for m in EVALUATE_METRICS if m in mean},
    }


def held_out(run: Path) -> dict[str, dict[int, float]]:
    """metric -> {step: value} of a run's `val/*` lines."""
    curves: dict[str, dict[int, float]] = {}
    for line in read_metrics(run):
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


def ablation_table(study: Study, jobs: list[Job], step: int) -> dict[str, dict[str, float]]:
    """(d): the held-out metrics of every seed-0 run at `step`."""
    table = {}
    for job in jobs:
        run = study.run(job.name)
        if not (run / "metrics.jsonl").is_file():
            continue
        curves = held_out(run)
        table[job.method] = {
            m: curves[m][step] for m in ABLATION_METRICS if step in curves.get(m, {})
        }
    return table


def psnr_lines(compare_result: dict) -> dict[str, float]:
    """The validation batch's reference lines in PSNR (line -> dB), from `cameo compare`."""
    lines = compare_result["reference_lines"]
    return {
        line: lines[f"val/line_{line}_psnr"]["value"]
        for line in LINES
        if f"val/line_{line}_psnr" in lines
    }


def plot_precision_vs_quality(correlation: dict, lines: dict[str, float], path: Path) -> None:
    """(b) as a picture: every validation of every run, precision against PSNR, with the
    reference lines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, metric in zip(axes, ("val/psnr", "val/psnr_x0"), strict=True):
        for run, pairs in correlation.items():
            values = pairs[metric]
            style = "o-" if run.startswith("baseline") else "s--"
            axis.plot(values["val/precision"], values[metric], style, markersize=3, label=run)
        for (line, value), style in zip(lines.items(), (":", "--", "-."), strict=False):
            axis.axhline(value, color="0.4", linestyle=style, linewidth=1, label=f"{line} line")
        axis.set_xlabel("val/precision (head-averaged attention, exact token)")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(path, figure)


def print_tables(report: dict, ablation_steps: int) -> None:
    """The ablations and the evaluations beside the reference lines, the layers, (b)."""
    lines = report["reference_lines_psnr"]
    table = Table(title=f"ablations at step {ablation_steps} (seed 0), held-out validation")
    table.add_column("method")
    for metric in ABLATION_METRICS:
        table.add_column(metric, justify="right")
    for method, values in report["d_ablations"].items():
        cells = (f"{values[m]:.4f}" if m in values else "-" for m in ABLATION_METRICS)
        table.add_row(method, *cells)
    for line, value in lines.items():  # a line scores the same at every step
        psnr_cells = (f"{value:.4f}" if m.startswith("val/psnr") else "-" for m in ABLATION_METRICS)
        table.add_row(f"{line} line", *psnr_cells)
    console.print(table)
    evaluated = Table(title="cameo evaluate on the held-out evaluation index (sampled)")
    for column in ("run", "step", *EVALUATE_METRICS):
        evaluated.add_column(column, justify="right")
    for run, values in report["e_evaluate"].items():
        cells = (f"{values[m]:.4f}" if m in values else "-" for m in EVALUATE_METRICS)
        evaluated.add_row(run, str(values["step"]), *cells)
    console.print(evaluated)
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduction"))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--prior", type=Path, help="a local diffusers/cameo backbone folder")
    parser.add_argument("--seeds", type=int, help="seeds of the baseline and CAMEO [preset]")
    parser.add_argument("--steps", type=int, help="steps of the seeded runs [preset]")
    parser.add_argument("--ablation-steps", type=int, help="[preset]")
    parser.add_argument("--batch", type=int, help="samples per step [preset]")
    parser.add_argument("--jobs", type=int, help="runs trained at once [preset]")
    parser.add_argument(
        "--ablations",
        type=lambda names: tuple(filter(None, names.split(","))),
        help="comma list of the seed-0 ablations, '' for none [preset]",
    )
    parser.add_argument("--report-only", action="store_true", help="measure the runs as they are")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sizes = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(Preset)}
    preset = dataclasses.replace(
        PRESETS[args.preset], **{k: v for k, v in sizes.items() if v is not None}
    )
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no GPU")
    prior = args.prior.resolve() if args.prior else None
    study = Study(args.out, preset, args.device, prior)
    started = time.monotonic()
    # seed 0 of both methods first, then the ablations, then the other seeds
    core = [Job(m, s, preset.steps) for s in range(preset.seeds) for m in CORE]
    ablations = [Job(m, 0, preset.ablation_steps) for m in preset.ablations if installed(m)]
    jobs = core[:2] + ablations + core[2:]
    times_file = study.out / "times.json"
    if not args.report_only:
        prepare(study)
        todo = [job for job in jobs if not finished(study.run(job.name), job.steps)]
        seconds = run_all(study, {job.name: train_command(study, job) for job in todo})
        times = read_json(times_file) if times_file.is_file() else {}
        write_json(times_file, {**times, **seconds})
    core_runs = [job.name for job in core if finished(study.run(job.name), job.steps)]
    diagnosed = [run for run in core_runs if run.startswith("baseline") or run == "cameo-seed0"]
    measures = {f"diagnose-{run}": diagnose_command(study, run) for run in diagnosed}
    measures |= {f"evaluate-{run}": evaluate_command(study, run) for run in core_runs}
    measure_seconds = run_all(study, measures)
    compared = compare(study)
    report = {
        "command": " ".join(sys.argv),
        "preset": {"name": args.preset, **dataclasses.asdict(preset)},
        "samples_per_run": preset.steps * preset.batch,
        "device": args.device,
        "prior": str(prior) if prior else None,
        "data": {
            "train": str(study.train_data),
            "held_out": str(study.held_out),
            "validation": "held-out",
        },
        "runs": {job.name: finished(study.run(job.name), job.steps) for job in jobs},
        "train_seconds": read_json(times_file) if times_file.is_file() else {},
        "measure_seconds": measure_seconds,
        "reference_lines_psnr": psnr_lines(compared),
        "a_layers": {
            run: diagnosis(study, run) for run in diagnosed if f"diagnose-{run}" in measure_seconds
        },
        "b_precision_vs_psnr": {
            run: {
                metric: correlations(study.run(run), precision, metric)
                for precision, metric in (
                    ("val/precision", "val/psnr"),
                    ("val/precision", "val/psnr_x0"),
                )
            }
            for run in core_runs
        },
        "c_compare": compared,
        "d_ablations": ablation_table(
            study, [Job("baseline", 0, 0), Job("cameo", 0, 0), *ablations], preset.ablation_steps
        ),
        "e_evaluate": {
            run: evaluation(study, run) for run in core_runs if f"evaluate-{run}" in measure_seconds
        },
        "study_seconds": time.monotonic() - started,
    }
    write_json(study.out / "report.json", report)
    plot_precision_vs_quality(
        report["b_precision_vs_psnr"],
        report["reference_lines_psnr"],
        study.out / "precision_vs_psnr.png",
    )
    print_tables(report, preset.ablation_steps)
    console.print(f"report: {study.out / 'report.json'}; curves: {study.out / 'compare'}")


if __name__ == "__main__":
    main()
