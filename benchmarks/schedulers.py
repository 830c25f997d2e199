"""DPM-Solver++ at 20 steps against DDIM at 50: PSNR and time on the same checkpoint and
scenes, in one run.

Both go through `cameo evaluate`'s job (PSNR of every target view of the evaluation index,
per-scene seeds, so both samplers start from the same noise). Without `--checkpoint` the
quick-start recipe (tiny CAT3D, 32 px) is first trained for `--train-steps` on a synthetic
dataset, which is also the evaluation set.

    python benchmarks/schedulers.py --out bench-schedulers [--checkpoint RUN --dataset DATA]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from cameo_cli.config import load_recipe
from cameo_cli.data.shards import prepare_dataset
from cameo_cli.data.synthetic import SyntheticSource
from cameo_cli.evaluate.job import EvaluateRequest, run_evaluation
from cameo_cli.train.loop import run_training

SETTINGS = (("ddim", 50), ("dpm-solver++", 20))


def tiny_model(out: Path, steps: int) -> tuple[Path, Path]:
    """A synthetic dataset and a quick-start run trained on it (skipped when present)."""
    dataset, run = out / "dataset", out / "run"
    if not (dataset / "index.json").is_file():
        source = SyntheticSource(scenes=8, resolution=32, frames=16, seed=0)
        prepare_dataset(source, dataset, scenes_per_shard=8, console=Console(quiet=True))
    if not (run / "checkpoints").is_dir():
        recipe = load_recipe(
            "quickstart-cpu",
            [f"data.dataset={dataset}", f"train.steps={steps}", f"train.validate_every={steps}"],
        )
        run_training(recipe, run)
    return run, dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, help="A run, checkpoint or export folder.")
    parser.add_argument("--dataset", type=Path, help="Its prepared evaluation dataset.")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--limit", type=int, help="Evaluate only the first N scenes.")
    parser.add_argument("--device")
    args = parser.parse_args()
    checkpoint, dataset = args.checkpoint, args.dataset
    if checkpoint is None or dataset is None:
        checkpoint, dataset = tiny_model(args.out, args.train_steps)
    console = Console(stderr=True)
    rows = []
    for scheduler, steps in SETTINGS:
        request = EvaluateRequest(
            checkpoint=checkpoint,
            dataset=dataset,
            out=args.out / f"eval-{scheduler}-{steps}",
            metrics=["psnr"],
            steps=steps,
            scheduler=scheduler,
            limit=args.limit,
            overwrite=True,
            device=args.device,
        )
        started = time.perf_counter()
        results = run_evaluation(request, console)
        seconds = time.perf_counter() - started
        rows.append((scheduler, steps, results["mean"]["psnr"], seconds, results["views"]))
    print(f"{'scheduler':14s} {'steps':>5s} {'PSNR':>8s} {'seconds':>8s} {'s/view':>7s}")
    for scheduler, steps, value, seconds, views in rows:
        print(f"{scheduler:14s} {steps:5d} {value:8.3f} {seconds:8.2f} {seconds / views:7.3f}")
    ddim, dpm = rows
    print(f"DPM-Solver++ 20 vs DDIM 50: {dpm[2] - ddim[2]:+.3f} dB, {ddim[3] / dpm[3]:.2f}x faster")


if __name__ == "__main__":
    main()
