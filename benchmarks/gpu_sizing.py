"""What one training step of the study's tiny model costs: the figures behind the GPU preset.

For `repro-cpu-baseline` and `repro-cpu-cameo` (tiny CAT3D, 32 px as 2x2 pixel blocks),
measured on this CPU through the trainer's own `train_step` (forward, backward, AdamW):
FLOPs per training sample (`torch.utils.flop_counter`), the aten operations one step and one
validation dispatch (on a GPU each is at least one kernel launch: the count that bounds a
model this small), the seconds of a step and of loading one batch. `benchmarks/
reproduction.py` sizes its `gpu-5min` preset from these (its module docstring).

    python benchmarks/gpu_sizing.py [--steps 3] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def measure(recipe_name: str, data: Path, out: Path, batch: int, steps: int) -> dict:
    """Step seconds, batch-loading seconds, FLOPs per sample, ops per step and validation."""
    from accelerate import Accelerator

    from cameo_cli.config import load_recipe
    from cameo_cli.train.loop import TRAIN_SPLIT, Trainer
    from cameo_cli.train.setup import open_dataset

    overrides = [f"data.dataset={data}", f"train.batch_size={batch}"]
    recipe = load_recipe(recipe_name, overrides)
    dataset = open_dataset(recipe, needs_geometry=True, split=TRAIN_SPLIT)
    trainer = Trainer.from_recipe(recipe, out, Accelerator(cpu=True), dataset)
    trainer.start(None, overwrite=False, command=["benchmark"])
    trainer.train_step()  # warm-up
    flops = FlopCounterMode(display=False)
    with flops:
        trainer.train_step()
    ops = OpCounter()
    with ops:
        trainer.train_step()
    step_times, load_times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        step_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        trainer.next_batch()
        load_times.append(time.perf_counter() - start)
    validation_ops = OpCounter()
    start = time.perf_counter()
    with validation_ops:
        trainer._validate(trainer.step)
    return {
        "batch": batch,
        "flops_per_sample": flops.get_total_flops() / batch,
        "ops_per_step": ops.count,
        "step_s": statistics.median(step_times),
        "load_batch_s": statistics.median(load_times),
        "validation_ops": validation_ops.count,
        "validation_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per recipe")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from rich.console import Console

    from cameo_cli.data.shards import prepare_dataset
    from cameo_cli.data.synthetic import SyntheticSource

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic"
        source = SyntheticSource(scenes=8, resolution=64, frames=16, seed=0, geometry="depth")
        prepare_dataset(source, data, console=Console(quiet=True))
        for index, name in enumerate(("repro-cpu-baseline", "repro-cpu-cameo")):
            r = measure(name, data, Path(tmp) / f"run{index}", args.batch, args.steps)
            print(
                f"{name}, batch {r['batch']}, 1 thread: {r['flops_per_sample'] / 1e9:.3f} "
                f"GFLOP per training sample; {r['ops_per_step']} aten ops per step, "
                f"{r['step_s']:.2f} s per step, {r['load_batch_s'] * 1000:.0f} ms to load a "
                f"batch; validation {r['validation_ops']} ops, {r['validation_s']:.1f} s"
            )


if __name__ == "__main__":
    main()
