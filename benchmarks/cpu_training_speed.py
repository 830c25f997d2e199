"""Training samples per second on the CPU: cameo 0.1.0's quick-start recipe against today's.

Both recipes train in one process on the same synthetic data, stepping in turns (so a change
in the machine's load hits both alike): the trainer's own `train_step` (forward, backward,
AdamW), timed after a warm-up. Validation, which runs every `train.validate_every` steps, is
timed once per recipe and amortised over its cadence. Printed: seconds per step, validation
seconds, samples per second with and without validation, and the ratio new / old.

    python benchmarks/cpu_training_speed.py [--steps 20] [--threads 2] [--set KEY=VALUE ...]

`--set` changes the new recipe only (to measure one lever at a time).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

# cameo 0.1.0's quick start, as overrides of today's `quickstart-cpu` recipe: pixel space at
# 32 px (1024 tokens per view on the per-view layers), batch 2, validation of 20 DDIM steps
# every 100 steps.
OLD_QUICKSTART = [
    "codec.kind=none",
    "data.resolution=32",
    "train.batch_size=2",
    "train.validate_every=100",
    "sample.steps=20",
]


def make_trainer(overrides: list[str], data: Path, out: Path, accelerator: object) -> object:
    from cameo_cli.config import load_recipe
    from cameo_cli.train.loop import TRAIN_SPLIT, Trainer
    from cameo_cli.train.setup import open_dataset

    recipe = load_recipe("quickstart-cpu", [f"data.dataset={data}", *overrides])
    dataset = open_dataset(recipe, needs_geometry=True, split=TRAIN_SPLIT)
    trainer = Trainer.from_recipe(recipe, out, accelerator, dataset)
    trainer.start(None, overwrite=False, command=["benchmark"])
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per recipe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from accelerate import Accelerator
    from rich.console import Console

    from cameo_cli.data.shards import prepare_dataset
    from cameo_cli.data.synthetic import SyntheticSource

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic"
        source = SyntheticSource(scenes=8, resolution=64, frames=16, test_scenes=1)
        prepare_dataset(source, data, console=Console(quiet=True))
        accelerator = Accelerator(cpu=True)
        recipes = {"old (0.1.0)": OLD_QUICKSTART, "new": args.extra}
        trainers = {
            name: make_trainer(overrides, data, Path(tmp) / f"run{i}", accelerator)
            for i, (name, overrides) in enumerate(recipes.items())
        }
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for index in range(args.steps + 2):  # two warm-up steps each
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_step()
                if index >= 2:
                    times[name].append(time.perf_counter() - start)
        results = {}
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer._validate(trainer.step)
            validation = time.perf_counter() - start
            train = trainer.recipe.train
            step = statistics.median(times[name])
            per_step_with_validation = step + validation / train.validate_every
            results[name] = {
                "image": trainer.recipe.data.resolution,
                "codec": f"{trainer.recipe.codec.kind}",
                "batch": train.batch_size,
                "step_s": step,
                "validation_s": validation,
                "samples_per_s": train.batch_size / step,
                "samples_per_s_with_validation": train.batch_size / per_step_with_validation,
            }
        accelerator.end_training()
    print(
        f"{args.steps} timed steps each, {args.threads} threads; new recipe overrides: {args.extra}"
    )
    for name, r in results.items():
        print(
            f"  {name:12s} {r['image']} px, codec {r['codec']}, batch {r['batch']}: "
            f"{r['step_s'] * 1000:.0f} ms/step, validation {r['validation_s']:.1f} s; "
            f"{r['samples_per_s']:.2f} samples/s ({r['samples_per_s_with_validation']:.2f} "
            "with validation)"
        )
    old, new = results["old (0.1.0)"], results["new"]
    print(
        f"  ratio new / old: {new['samples_per_s'] / old['samples_per_s']:.2f}x samples/s "
        f"({new['samples_per_s_with_validation'] / old['samples_per_s_with_validation']:.2f}x "
        "with validation)"
    )


if __name__ == "__main__":
    main()
