"""`train.sharding: fsdp` (FSDP2) with two CPU processes (gloo, torch.distributed.run): it
follows DDP, its full-state checkpoints round-trip exactly, resume across a change of process
count, and load in `cameo sample` and `cameo export`; and what cannot shard is refused
before anything is written.

Tolerances. Same process count, fsdp against ddp: 1e-5 relative (the same sums, sharded).
Across process counts the noise is the same (each sample's own generator), but the CAMEO term
is averaged over each process's rows, as the official trainer does (docs/fidelity.md): the
logged terms then differ by up to ~1e-3 relative at this size (measured: 6e-4 on `cameo`,
3e-4 on `loss` after 3 steps).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from cameo_cli.cli import main
from cameo_cli.config import load_recipe
from cameo_cli.errors import CameoError
from cameo_cli.files import save_gathered_safetensors
from cameo_cli.train.plan import check_recipe, check_shardable

SAME_COUNT = 1e-5
OTHER_COUNT = 1e-3
TERMS = ("denoise", "cameo", "loss")
WEIGHTS = "diffusion_pytorch_model.safetensors"

ROUND_TRIP = """
import sys
from pathlib import Path

from accelerate import Accelerator

from cameo_cli.config import load_recipe
from cameo_cli.train.loop import Trainer
from cameo_cli.train.setup import open_dataset

checkpoint, out = Path(sys.argv[1]), Path(sys.argv[2])
recipe = load_recipe(str(checkpoint / "config.yaml"))
accelerator = Accelerator(cpu=True)
dataset = open_dataset(recipe, needs_geometry=True, split="train")
trainer = Trainer.from_recipe(recipe, out, accelerator, dataset)
trainer.start(checkpoint, overwrite=False, command=sys.argv)
# each process keeps compact shards of the loaded state, not views of whole tensors
loaded = [v for s in trainer.optimizer.state.values() for v in s.values() if v.dim() > 0]
loaded += list(trainer.ema.state_dict().values())
for value in loaded:
    local = value.to_local()
    assert local.untyped_storage().nbytes() == local.numel() * local.element_size()
    assert local.shape[0] <= -(-value.shape[0] // 2)  # at most half of dim 0, rounded up
trainer.save_checkpoint()
accelerator.end_training()  # destroys the process group: no gloo thread left at exit
"""


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _launch(processes: int, *args: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(processes), *args]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def _train(processes: int, *args: str) -> None:
    """`cameo train` over `processes` processes; one under ddp runs in this process (fsdp
    would leave its process group of one behind)."""
    if processes > 1 or "train.sharding=fsdp" in args:
        _launch(processes, "-m", "cameo_cli", "train", *args)
        return
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 0, result.output


def _fresh(
    processes: int, run: Path, dataset: Path, sharding: str, *extra: str, steps: int = 3
) -> Path:
    """3 steps of the quick-start recipe, global batch 2, EMA on, checkpoints at 2 and 3."""
    args = ["--recipe", "quickstart-cpu", "--dataset", str(dataset), "--output", str(run)]
    args += ["--steps", str(steps)]
    for value in (
        *extra,
        "train.batch_size=2",
        "train.log_every=1",
        "train.checkpoint_every=2",
        "train.validate_every=100",
        "train.warmup_steps=1",
        "train.ema=true",
        "train.ema_decay=0.9",
        "train.trackers=[]",
        "sample.steps=2",
        f"train.sharding={sharding}",
    ):
        args += ["--set", value]
    _train(processes, *args)
    return run


def _losses(run: Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: {k: row[k] for k in TERMS} for row in rows if "loss" in row}


def _assert_close(got: dict, want: dict, tolerance: float, steps: list[int]) -> None:
    for step in steps:
        for term in TERMS:
            a, b = got[step][term], want[step][term]
            assert math.isclose(a, b, rel_tol=tolerance), (step, term, a, b)


def _resumed_from_step_2(run: Path, copy: Path, processes: int, sharding: str) -> Path:
    """`run` continued from its step-2 checkpoint by `processes` processes under `sharding`."""
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "step-000003")
    args = ["--output", str(copy), "--resume", "latest", "--steps", "3"]
    _train(processes, *args, "--set", f"train.sharding={sharding}")
    return copy


@pytest.fixture(scope="module")
def fsdp_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fresh(2, tmp_path_factory.mktemp("fsdp") / "run", synthetic_dataset, "fsdp")


@pytest.fixture(scope="module")
def single_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fresh(1, tmp_path_factory.mktemp("single") / "run", synthetic_dataset, "ddp")


@pytest.mark.slow
def test_fsdp_follows_ddp(fsdp_run, single_run, synthetic_dataset, tmp_path):
    ddp = _fresh(2, tmp_path / "ddp", synthetic_dataset, "ddp")
    _assert_close(_losses(fsdp_run), _losses(ddp), SAME_COUNT, [1, 2, 3])
    # one process sees the same samples and noise: its first step's denoising term is equal
    first = _losses(single_run)[1]
    assert math.isclose(_losses(fsdp_run)[1]["denoise"], first["denoise"], rel_tol=SAME_COUNT)
    _assert_close(_losses(fsdp_run), _losses(single_run), OTHER_COUNT, [1, 2, 3])


@pytest.mark.slow
def test_fsdp_in_bf16_with_gradient_checkpointing(synthetic_dataset, tmp_path):
    """Parameters gathered in bf16: training and validation (under autocast) run, and the
    checkpoint holds the fp32 weights."""
    extra = ("train.mixed_precision=bf16", "backbone.gradient_checkpointing=true")
    run = _fresh(2, tmp_path / "run", synthetic_dataset, "fsdp", *extra, steps=1)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(rows[0]["loss"]) and "val/psnr" in rows[-1]
    weights = load_file(str(run / "checkpoints" / "step-000001" / "backbone" / WEIGHTS))
    assert {v.dtype for v in weights.values()} == {torch.float32}


@pytest.mark.slow
def test_fsdp_checkpoint_round_trips_exactly(fsdp_run, tmp_path):
    """Load the full-state checkpoint into two sharded processes and save it again."""
    checkpoint = fsdp_run / "checkpoints" / "step-000003"
    script = tmp_path / "round_trip.py"
    script.write_text(ROUND_TRIP)
    _launch(2, str(script), str(checkpoint), str(tmp_path / "again"))
    saved = tmp_path / "again" / "checkpoints" / "step-000003"
    files = sorted(p.relative_to(checkpoint) for p in checkpoint.rglob("*.safetensors"))
    assert Path("optimizer.safetensors") in files and Path("ema.safetensors") in files
    assert files == sorted(p.relative_to(saved) for p in saved.rglob("*.safetensors"))
    for name in files:
        before, after = load_file(str(checkpoint / name)), load_file(str(saved / name))
        assert before.keys() == after.keys(), name
        for key in before:
            assert torch.equal(before[key], after[key]), (name, key)
    for name in ("optimizer.json", "scheduler.json", "state.json"):
        assert (checkpoint / name).read_text() == (saved / name).read_text(), name


@pytest.mark.slow
def test_resume_two_to_one_and_one_to_two(fsdp_run, single_run, tmp_path):
    """fsdp on 2 -> fsdp on 1 (a process group of one), ddp on 1 -> fsdp on 2."""
    two_to_one = _resumed_from_step_2(fsdp_run, tmp_path / "two_to_one", 1, "fsdp")
    _assert_close(_losses(two_to_one), _losses(fsdp_run), OTHER_COUNT, [3])
    one_to_two = _resumed_from_step_2(single_run, tmp_path / "one_to_two", 2, "fsdp")
    _assert_close(_losses(one_to_two), _losses(single_run), OTHER_COUNT, [3])


@pytest.mark.slow
def test_fsdp_checkpoint_loads_in_sample_and_export(fsdp_run, sample_inputs, tmp_path):
    exported = CliRunner().invoke(main, ["export", str(fsdp_run), "--out", str(tmp_path / "x")])
    assert exported.exit_code == 0, exported.output
    views = [sample_inputs / "view0.png", sample_inputs / "view1.png"]
    for source in (fsdp_run, tmp_path / "x"):
        out = tmp_path / f"out-{source.name}"
        args = ["sample", "--checkpoint", source, "--views", *views]
        args += ["--cameras", sample_inputs / "refs.json", "--out", out, "--steps", 2]
        args += ["--targets", sample_inputs / "targets.json"]
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        assert (out / "contact_sheet.png").is_file()


def test_what_cannot_shard_is_refused_before_anything_is_written(synthetic_dataset, tmp_path):
    recipe = load_recipe("quickstart-cpu", ["train.sharding=fsdp"])
    check_recipe(recipe)  # the tiny CAT3D in fp32 shards
    with pytest.raises(CameoError, match=r"backbone 'cat3d' names no blocks to shard"):
        check_shardable(recipe, ())
    run = tmp_path / "run"
    args = ["train", "--recipe", "quickstart-cpu", "--dataset", str(synthetic_dataset)]
    args += ["--output", str(run), "--set", "train.sharding=fsdp"]
    args += ["--set", "train.mixed_precision=fp16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "train.mixed_precision fp16" in lines[0], result.output
    assert "Traceback" not in result.output
    assert not run.exists()


def test_gathered_safetensors_equal_the_library_writer(tmp_path):
    tensors = {
        "w": torch.randn(3, 5),
        "half": torch.randn(4).to(torch.bfloat16),
        "step": torch.tensor(7.0),
        "mask": torch.tensor([True, False, True]),
        "index": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }
    save_gathered_safetensors(tensors, tmp_path / "skipped.safetensors", write=False)
    assert not (tmp_path / "skipped.safetensors").exists()
    save_gathered_safetensors(tensors, tmp_path / "ours.safetensors", write=True)
    save_file(tensors, str(tmp_path / "library.safetensors"))
    ours, library = (
        load_file(str(tmp_path / "ours.safetensors")),
        load_file(str(tmp_path / "library.safetensors")),
    )
    assert ours.keys() == library.keys()
    for key in ours:
        assert ours[key].dtype == library[key].dtype and torch.equal(ours[key], library[key]), key
