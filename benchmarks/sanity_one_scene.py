"""End-to-end sanity run: train on one scene until the sampled target views come back.

A case with a known answer, run before any study. `cameo prepare synthetic` renders ONE scene
of four views; the `sanity-one-scene` recipe always hands the model views 0 and 3 as
references and asks for views 1 and 2. Training goes in chunks of `--chunk` steps through
`cameo train` (each chunk ends with a validation that samples the targets: `val/psnr`) until
the sampled targets reach `--goal` dB, `--max-steps` or `--minutes` of training. Then the last
checkpoint goes through `cameo evaluate` (PSNR, SSIM, sharpness and the reference lines of the
scene's evaluation views, which are the same four) and `cameo sample` (the same targets from
the saved reference PNGs and camera files), so the path train -> checkpoint -> sample ->
evaluate (sampler, guidance, codec, conditioning, files) is proven, not only the trainer.

Resumable: a chunk resumes from the run's last checkpoint and the training seconds add up in
`OUT/progress.json`, so the same command continues after a stop:

    nohup python benchmarks/sanity_one_scene.py --out runs/sanity > sanity.log 2>&1 &

Writes `OUT/report.json` (the curve, the final figures) and `OUT/curve.png`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from cameo_cli.files import read_image, read_json, save_figure, write_json
from cameo_cli.image_metrics import psnr
from cameo_cli.run_folder.metrics import read_metrics

SCENE = "synth-00000"
CURVE = ("val/psnr", "val/psnr_x0", "val/sharpness", "val/denoise_t250")
LINES = ("flat", "copy", "reproject")


def cameo(*args: object) -> list[object]:
    return [sys.executable, "-m", "cameo_cli", *args]


def run(command: list[object], log: Path) -> None:
    """Run a cameo command, its output appended to `log`; a failure stops the benchmark."""
    command = [str(part) for part in command]
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command[2:])}\n")
        handle.flush()
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"{' '.join(command[2:])} failed (exit {code}); see {log}")


def validations(run_folder: Path) -> list[dict]:
    """The run's validation lines (those with `val/psnr`), in step order."""
    return [line for line in read_metrics(run_folder, required=False) if "val/psnr" in line]


def train(args: argparse.Namespace, data: Path, log: Path) -> list[dict]:
    """Chunks of `cameo train` until the goal, the step cap or the time cap."""
    folder, progress_file = args.out / "run", args.out / "progress.json"
    progress = read_json(progress_file) if progress_file.is_file() else {"train_seconds": 0.0}
    while True:
        done = validations(folder)
        step = done[-1]["step"] if done else 0
        reached = bool(done) and done[-1]["val/psnr"] >= args.goal
        if reached or step >= args.max_steps or progress["train_seconds"] >= 60 * args.minutes:
            return done
        command = cameo("train", "--recipe", args.recipe, "--dataset", data)
        command += ["--output", folder, "--steps", step + args.chunk]
        command += [item for value in args.set for item in ("--set", value)]
        has_checkpoint = any((folder / "checkpoints").glob("step-*"))
        command += ["--resume", "latest"] if has_checkpoint else ["--overwrite"]
        started = time.monotonic()
        run(command, log)
        progress["train_seconds"] += time.monotonic() - started
        write_json(progress_file, progress)
        last = validations(folder)[-1]
        print(
            f"step {last['step']}: sampled {last['val/psnr']:.2f} dB, one-step "
            f"{last['val/psnr_x0']:.2f} dB, {progress['train_seconds'] / 60:.1f} min",
            flush=True,
        )


def sample_back(out: Path, log: Path) -> float:
    """`cameo sample` of the scene's targets from the references evaluate saved: mean PSNR."""
    images = out / "eval" / "images" / SCENE
    command = cameo("sample", "--checkpoint", out / "run", "--views")
    command += sorted(images.glob("reference_*.png"))
    command += ["--cameras", images / "references.json", "--targets", images / "targets.json"]
    run(command + ["--out", out / "sample", "--overwrite"], log)
    truth = sorted(images.glob("truth_*.png"))
    sampled = sorted((out / "sample").glob("target_*.png"))
    as_tensor = [
        torch.stack([torch.from_numpy(read_image(p).copy()).permute(2, 0, 1) for p in paths]) / 255
        for paths in (sampled, truth)
    ]
    return psnr(*as_tensor).mean().item()


def plot(curve: list[dict], lines: dict[str, float], goal: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4))
    steps = [c["step"] for c in curve]
    axis.plot(steps, [c["val/psnr"] for c in curve], "o-", label="sampled targets (val/psnr)")
    axis.plot(steps, [c["val/psnr_x0"] for c in curve], "s--", label="one-step x0 at t=500")
    for name, value in lines.items():
        axis.axhline(value, linestyle=":", color="grey")
        axis.annotate(name, (steps[0] if steps else 0, value), fontsize=8, va="bottom")
    axis.axhline(goal, color="green", alpha=0.5, label=f"goal {goal:g} dB")
    axis.set_xlabel("training step")
    axis.set_ylabel("PSNR (dB) of the two target views")
    axis.set_title("sanity run: one scene, references 0 and 3, targets 1 and 2")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(path, figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sanity"))
    parser.add_argument("--recipe", default="sanity-one-scene")
    parser.add_argument("--goal", type=float, default=25.0, help="sampled PSNR to reach (dB)")
    parser.add_argument("--minutes", type=float, default=45.0, help="training time cap")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--chunk", type=int, default=150, help="steps between validations")
    parser.add_argument("--set", action="append", default=[], help="recipe override k=v")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log, data = args.out / "log.txt", args.out / "data"
    run(
        cameo("prepare", "synthetic", "--out", data, "--scenes", 1, "--frames", 4)
        + ["--test-scenes", "0"],
        log,
    )
    curve = train(args, data, log)
    run(
        cameo("evaluate", "--checkpoint", args.out / "run", "--dataset", data)
        + ["--save-images", "--out", args.out / "eval", "--overwrite"],
        log,
    )
    evaluation = read_json(args.out / "eval" / "results.json")["mean"]
    lines = {name: evaluation[f"{name}_psnr"] for name in LINES if f"{name}_psnr" in evaluation}
    report = {
        "command": " ".join(sys.argv),
        "goal_db": args.goal,
        "reached": bool(curve) and curve[-1]["val/psnr"] >= args.goal,
        "train_seconds": read_json(args.out / "progress.json")["train_seconds"],
        "curve": [{k: c[k] for k in ("step", *CURVE) if k in c} for c in curve],
        "evaluate": evaluation,
        "sample_psnr": sample_back(args.out, log),
    }
    write_json(args.out / "report.json", report, indent=1)
    plot(curve, lines, args.goal, args.out / "curve.png")
    print(
        f"{'reached' if report['reached'] else 'NOT reached'} {args.goal:g} dB: "
        f"cameo evaluate {evaluation['psnr']:.2f} dB (SSIM {evaluation['ssim']:.3f}), "
        f"cameo sample {report['sample_psnr']:.2f} dB, lines "
        + ", ".join(f"{k} {v:.2f}" for k, v in lines.items())
        + f"; {report['train_seconds'] / 60:.1f} min of training; {args.out / 'report.json'}"
    )


if __name__ == "__main__":
    main()
