"""What makes the quick start learn faster per CPU second: one lever at a time, measured.

Each lever is the `quickstart-cpu` recipe with one change (`--set`, or one option of
`cameo prepare synthetic`: then its own dataset and its own reference lines), trained from
the same seed on the same synthetic scenes (the quick start's defaults) for the same steps,
validated on the held-out scenes every `--every` steps (`val/psnr`: sampled target views;
`val/sharpness`; `val/psnr_x0`: one-step estimate at t = 500; `val/denoise_t250`) beside
the reference lines of that batch. Sampling levers
(guidance, sampler steps) reuse the `quickstart` run's last checkpoint through
`cameo evaluate` on `--eval-scenes` held-out scenes, as does every trained lever.

Every run goes on one thread (OMP_NUM_THREADS=1) and is resumable: a finished run is
skipped, an interrupted one resumes from its last checkpoint, so the same command continues:

    nohup python benchmarks/quickstart_levers.py --out runs/levers > levers.log 2>&1 &

Writes `OUT/report.json` (curves, training seconds, evaluations), `OUT/levers.md` (the
table) and `OUT/curves.png`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cameo_cli.files import read_json, write_json
from cameo_cli.run_folder.metrics import read_metrics

RECIPE = "quickstart-cpu"
# data levers: name -> `cameo prepare synthetic` options (trained with the quick start recipe)
DATA = {"textures-x2": ["--texture-scale", "2"], "textures-x4": ["--texture-scale", "4"]}
# trained levers: name -> recipe overrides (the first is the reference)
TRAINED = {
    "quickstart": [],
    "textures-x2": [],
    "min-snr-5": ["diffusion.min_snr_gamma=5"],
    "lr-1e-3": ["train.learning_rate=1e-3"],
    "ema-0.99": ["train.ema=true", "train.ema_decay=0.99"],
    "epsilon": ["diffusion.prediction=epsilon"],
    "no-cameo": ["alignment.method=none"],
    "textures-x4": [],
    "min-snr-5-lr-1e-3": ["diffusion.min_snr_gamma=5", "train.learning_rate=1e-3"],
    "seed-1": ["train.seed=1"],  # run-to-run spread: the reference with another seed
}
# sampling levers on the quickstart run's checkpoint: name -> `cameo evaluate` options
SAMPLED = {
    "guidance-1": ["--guidance", "1.0"],
    "ddim-50": ["--steps", "50"],
    "dpm-solver-20": ["--scheduler", "dpm-solver++"],
}
CURVE = ("val/psnr", "val/sharpness", "val/psnr_x0", "val/denoise_t250")
LINES = ("val/line_flat_psnr", "val/line_copy_psnr", "val/line_reproject_psnr")
EVALUATED = ("psnr", "ssim", "sharpness", "flat_psnr", "copy_psnr", "reproject_psnr")


def cameo(*args: object) -> list[str]:
    return [sys.executable, "-m", "cameo_cli", *(str(a) for a in args)]


def run(command: list[str], log: Path) -> float:
    """Run a cameo command on one thread, output appended to `log`; return its seconds."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command[2:])}\n")
        handle.flush()
        started = time.monotonic()
        code = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, env=environment
        ).returncode
    if code != 0:
        sys.exit(f"{' '.join(command[2:])} failed (exit {code}); see {log}")
    return time.monotonic() - started


def validations(folder: Path) -> list[dict]:
    """The run's validation lines (those with `val/psnr`), in step order."""
    return [line for line in read_metrics(folder, required=False) if "val/psnr" in line]


def dataset(name: str, args: argparse.Namespace) -> Path:
    """The prepared folder lever `name` trains on (prepared on first use)."""
    folder = args.out / ("data-" + name if name in DATA else "data")
    if not (folder / "index.json").is_file():
        command = cameo("prepare", "synthetic", "--out", folder, *DATA.get(name, []))
        run(command, args.out / "log.txt")
    return folder


def train(name: str, overrides: list[str], args: argparse.Namespace) -> float:
    """Train lever `name` to `args.steps` (resuming); return its training seconds so far
    (kept in the run folder's `train_seconds.json`)."""
    folder = args.out / "runs" / name
    seconds_file = folder / "train_seconds.json"
    seconds = read_json(seconds_file)["seconds"] if seconds_file.is_file() else 0.0
    done = validations(folder)
    if done and done[-1]["step"] >= args.steps:
        return seconds
    command = cameo("train", "--recipe", RECIPE, "--dataset", dataset(name, args))
    command += ["--output", str(folder), "--steps", str(args.steps)]
    settings = [f"train.validate_every={args.every}", f"train.checkpoint_every={args.every}"]
    for value in [*settings, "train.trackers=[]", *overrides]:
        command += ["--set", value]
    has_checkpoint = any((folder / "checkpoints").glob("step-*"))
    command += ["--resume", "latest"] if has_checkpoint else ["--overwrite"]
    seconds += run(command, args.out / "log.txt")
    write_json(seconds_file, {"seconds": seconds})
    last = validations(folder)[-1]
    print(f"{name}: step {last['step']}, sampled {last['val/psnr']:.2f} dB", flush=True)
    return seconds


def evaluate(name: str, run_name: str, options: list[str], args: argparse.Namespace) -> dict:
    """`cameo evaluate` of `run_name`'s last checkpoint on the held-out index: the mean."""
    out = args.out / "eval" / name
    if not (out / "results.json").is_file():
        command = cameo("evaluate", "--checkpoint", args.out / "runs" / run_name)
        command += ["--dataset", str(dataset(run_name, args)), "--limit", str(args.eval_scenes)]
        run(command + ["--out", str(out), *options], args.out / "log.txt")
    mean = read_json(out / "results.json")["mean"]
    return {key: mean[key] for key in EVALUATED if key in mean}


def plot(curves: dict[str, list[dict]], lines: dict[str, float], path: Path) -> None:
    """`val/psnr` of every lever over training, the reference run's lines as horizontal lines
    (`cameo compare`'s plot, one seed per lever)."""
    from cameo_cli.compare.plots import metric_curves

    series = {}
    for name, curve in curves.items():
        values = np.array([[c["val/psnr"] for c in curve]])
        series[name] = (np.array([c["step"] for c in curve]), values, values[0])
    named = {key.split("_")[1]: value for key, value in lines.items()}
    metric_curves(series, "held-out sampled PSNR (dB), val/psnr", path, named)


def table(report: dict) -> str:
    out = [
        "| lever | train s | val/psnr (dB) | sharpness | one-step x0 (dB) | denoise t250 "
        "| lines flat / copy / reproject | evaluate PSNR | SSIM | sharpness "
        "| evaluate flat / copy / reproject |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["levers"].items():
        last = row["curve"][-1] if row.get("curve") else {}
        evaluation = row["evaluate"]
        cells = [
            name,
            f"{row['train_seconds']:.0f}" if "train_seconds" in row else "-",
            *(f"{last[k]:.3f}" if k in last else "-" for k in CURVE),
            " / ".join(f"{row['lines'][k]:.2f}" for k in LINES if k in row.get("lines", {})),
            *(f"{evaluation[k]:.3f}" for k in ("psnr", "ssim", "sharpness")),
            " / ".join(f"{evaluation[k]:.2f}" for k in EVALUATED[3:] if k in evaluation),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/levers"))
    parser.add_argument("--steps", type=int, default=400, help="steps of every trained lever")
    parser.add_argument("--every", type=int, default=100, help="steps between validations")
    parser.add_argument("--eval-scenes", type=int, default=4)
    parser.add_argument("--levers", default=",".join([*TRAINED, *SAMPLED]), help="comma list [all]")
    args = parser.parse_args()
    chosen = args.levers.split(",")
    unknown = sorted(set(chosen) - set(TRAINED) - set(SAMPLED))
    if unknown:
        parser.error(
            f"unknown lever(s) {', '.join(unknown)}; known: {', '.join(TRAINED)}, "
            f"{', '.join(SAMPLED)}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    # the sampling levers need the quickstart run
    needed = set(chosen) | ({"quickstart"} if set(chosen) & set(SAMPLED) else set())
    trained = [name for name in TRAINED if name in needed]
    levers = {}
    for name in trained:
        seconds = train(name, TRAINED[name], args)
        done = validations(args.out / "runs" / name)
        levers[name] = {
            "set": TRAINED[name],
            "prepare": DATA.get(name, []),
            "train_seconds": seconds,
            "lines": {k: done[0][k] for k in LINES if k in done[0]},
            "curve": [{k: v[k] for k in ("step", *CURVE) if k in v} for v in done],
            "evaluate": evaluate(name, name, [], args),
        }
    for name in (n for n in SAMPLED if n in chosen):
        levers[name] = {
            "evaluate_options": SAMPLED[name],
            "evaluate": evaluate(name, "quickstart", SAMPLED[name], args),
        }
    report = {"command": " ".join(sys.argv), "recipe": RECIPE, "steps": args.steps}
    report["levers"] = levers
    write_json(args.out / "report.json", report, indent=1)
    (args.out / "levers.md").write_text(table(report))
    lines = levers[trained[0]]["lines"]
    plot({n: levers[n]["curve"] for n in trained}, lines, args.out / "curves.png")
    print(table(report))


if __name__ == "__main__":
    main()
