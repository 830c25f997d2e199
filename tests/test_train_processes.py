"""Training across processes: two CPU ranks with gloo (torchrun), and a SIGKILL mid-checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cameo_cli.run_folder.checkpoints import load_for_inference

WORKER = """
import sys
from pathlib import Path

import torch.distributed as dist
from accelerate import Accelerator
from safetensors.torch import save_file

from cameo_cli.config import load_recipe
from cameo_cli.train.loop import Trainer
from cameo_cli.train.setup import open_dataset

dataset, run = sys.argv[1], Path(sys.argv[2])
recipe = load_recipe(
    "quickstart-cpu",
    [
        f"data.dataset={dataset}",
        "train.steps=3",
        "train.checkpoint_every=3",
        "train.batch_size=2",  # global: one sample per process
        "sample.steps=2",
    ],
)
accelerator = Accelerator(cpu=True)
try:
    dataset = open_dataset(recipe, needs_geometry=True, split="train")
    trainer = Trainer.from_recipe(recipe, run, accelerator, dataset)
    trainer.run(None, overwrite=False, command=sys.argv)
    weights = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    info = {"backend": dist.get_backend(), "world_size": str(dist.get_world_size())}
    save_file(weights, str(run.parent / f"rank{accelerator.process_index}.safetensors"), info)
finally:
    accelerator.end_training()
"""


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun is not installed",
)
def test_two_cpu_processes_end_with_identical_weights(synthetic_dataset, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(
        [*command, str(synthetic_dataset), str(tmp_path / "run")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    with safe_open(str(tmp_path / "rank0.safetensors"), "pt") as handle:
        assert handle.metadata() == {"backend": "gloo", "world_size": "2"}
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    # Training moved the weights, and the checkpoint holds the ranks' common weights.
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000003"
    saved = load_file(str(checkpoint / "backbone" / "diffusion_pytorch_model.safetensors"))
    key = "conv_in.weight"
    assert torch.equal(saved[key], ranks[0][f"backbone.model.{key}"])
    assert (checkpoint / "rng-rank0.json").is_file() and (checkpoint / "rng-rank1.json").is_file()


def _train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cameo_cli", "train", *args]


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(synthetic_dataset, tmp_path):
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    args = ["--recipe", "quickstart-cpu", "--dataset", str(synthetic_dataset), "--output", str(run)]
    args += ["--steps", "40", "--set", "train.checkpoint_every=1", "--set", "sample.steps=2"]
    args += ["--set", "train.batch_size=1"]
    process = subprocess.Popen(
        _train_command(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    killed_during = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            staging = [p for p in checkpoints.glob(".staging-*")] if checkpoints.is_dir() else []
            # Kill once a staged checkpoint has files in it and an older one is complete.
            if staging and any(staging[0].iterdir()) and list(checkpoints.glob("step-*")):
                process.send_signal(signal.SIGKILL)
                killed_during = staging[0].name
                break
            time.sleep(0.001)
    finally:
        if process.poll() is None and killed_during is None:
            process.kill()
        process.wait(timeout=60)
    assert killed_during is not None, process.stderr.read().decode()[-3000:]
    assert process.returncode == -signal.SIGKILL
    assert (checkpoints / killed_during).is_dir()  # the half-written checkpoint is still there
    complete = sorted(checkpoints.glob("step-*"))
    previous = complete[-1]
    assert int(previous.name.split("-")[1]) < int(killed_during.split("-")[-1])
    loaded = load_for_inference(run)
    assert loaded.step == int(previous.name.split("-")[1])
    # --resume latest continues from it (the recipe comes from the checkpoint).
    target = loaded.step + 1
    resumed = subprocess.run(
        _train_command("--output", str(run), "--resume", "latest", "--steps", str(target)),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_for_inference(run).step == target
    assert not list(checkpoints.glob(".staging-*"))
