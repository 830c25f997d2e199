"""Make the multi-view prior the quick start starts from, resumably (`recipes/prior-cpu.yaml`).

1. `cameo prepare synthetic` of seed 2 (`--scenes`, plus held-out scenes for validation):
   disjoint from the quick start's scenes (seed 0) and the study's held-out ones (seed 1).
2. `cameo train --recipe prior-cpu` in the work folder, resumed from its last checkpoint when
   there is one (`--steps` extends the run), so training spans sessions:

       nohup python benchmarks/make_prior.py --work ~/cameo-jobs/prior > prior.log 2>&1 &

3. With `--export`: `cameo export` of the last checkpoint (EMA weights) into `--out`, plus
   `PRIOR.json` (command, steps, samples, training seconds, last held-out metrics).
   The weights are committed once, when final: every committed version stays in history.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from cameo_cli.export.job import last_validation
from cameo_cli.files import read_json, write_json

PRIOR_SEED = 2


def cameo(*args: object) -> list[str]:
    return [sys.executable, "-m", "cameo_cli", *map(str, args)]


def options(*args: object) -> list[str]:
    return list(map(str, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/prior"), help="data and run")
    parser.add_argument("--out", type=Path, default=Path("recipes/priors/cat3d-tiny-synthetic"))
    parser.add_argument("--scenes", type=int, default=512)
    parser.add_argument("--test-scenes", type=int, default=16)
    parser.add_argument("--steps", type=int, help="total steps [recipe: 20000]")
    parser.add_argument("--export", action="store_true", help="export the last checkpoint")
    args = parser.parse_args()
    data, run = args.work / "data", args.work / "run"
    subprocess.run(
        cameo("prepare", "synthetic", "--out", data, "--seed", PRIOR_SEED)
        + options("--scenes", args.scenes, "--test-scenes", args.test_scenes),
        check=True,
    )
    command = cameo("train", "--recipe", "prior-cpu", "--dataset", data, "--output", run)
    command += options("--steps", args.steps) if args.steps else []
    resuming = any((run / "checkpoints").glob("step-*"))
    command += ["--resume", "latest"] if resuming else ["--overwrite"]
    times = args.work / "train_seconds.json"
    seconds = read_json(times)["seconds"] if times.is_file() else 0.0
    started = time.monotonic()
    try:
        subprocess.run(command, check=True)
    finally:  # an interrupted run keeps its time too: it resumes from its last checkpoint
        write_json(times, {"seconds": seconds + time.monotonic() - started})
    if not args.export:
        return
    subprocess.run(cameo("export", run, "--out", args.out, "--overwrite"), check=True)
    held_out = last_validation(run)
    config = read_json(args.out / "model_index.json")
    write_json(
        args.out / "PRIOR.json",
        {
            "made_by": "python benchmarks/make_prior.py --export"
            + (f" --steps {args.steps}" if args.steps else "")
            + f" (recipe prior-cpu, seed {PRIOR_SEED}, {args.scenes} scenes)",
            "step": config.get("step"),
            "train_seconds": read_json(times)["seconds"],
            "last_validation": held_out or None,
        },
    )


if __name__ == "__main__":
    main()
