"""benchmarks/reproduction.py: the study's driver, end to end on the CPU with its smoke preset."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cameo_cli.config import load_recipe
from cameo_cli.files import load_safetensors, read_json, read_json_lines

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "benchmarks" / "reproduction.py"
PRIOR_BIAS = 0.5  # conv_out.bias of the prior: far from any random initialisation


def driver():
    spec = importlib.util.spec_from_file_location("reproduction", DRIVER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cuda_packs_runs_on_the_visible_gpu_and_cpu_hides_it(monkeypatch, tmp_path):
    study = driver()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    preset = dataclasses.replace(study.CPU_SMOKE, jobs=4)
    cuda = study.Study(tmp_path, preset, "cuda", None).environment()
    assert cuda["CUDA_VISIBLE_DEVICES"] == "3"  # unchanged: every run on the same GPU
    assert cuda["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 4))
    cpu = study.Study(tmp_path, preset, "cpu", None).environment()
    assert (cpu["CUDA_VISIBLE_DEVICES"], cpu["OMP_NUM_THREADS"]) == ("", "1")


def test_gpu_preset_has_fifty_times_the_samples_of_the_cpu_study():
    study = driver()
    cpu, gpu = study.PRESETS["cpu"], study.PRESETS["gpu-5min"]
    assert cpu.steps * cpu.batch == 3200
    assert gpu.steps * gpu.batch >= 50 * 3200
    assert gpu.seeds >= 3 and gpu.steps % gpu.validate_every == 0


def make_prior(folder: Path) -> None:
    """A tiny CAT3D for the study's recipes whose output bias is PRIOR_BIAS everywhere."""
    import torch

    from cameo_cli.train.setup import build_training_backbone

    backbone = build_training_backbone(load_recipe("repro-cpu-cameo"), in_channels=12)
    with torch.no_grad():
        backbone.model.conv_out.bias.fill_(PRIOR_BIAS)
    backbone.save_pretrained(folder)


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
    """Held-out data, the prior, every run, the reference lines beside every PSNR, evaluate,
    a missing ablation recipe skipped; then a longer study resumes the finished runs."""
    prior, out = tmp_path / "prior", tmp_path / "study"
    make_prior(prior)
    command = [sys.executable, str(DRIVER), "--preset", "cpu-smoke", "--out", str(out)]
    command += ["--prior", str(prior), "--jobs", "4", "--ablations", "no-head,absent"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "skipped absent: recipe repro-cpu-absent is not installed" in done.stdout
    report = read_json(out / "report.json")
    assert report["runs"] == {"baseline-seed0": True, "cameo-seed0": True, "no-head-seed0": True}
    assert report["samples_per_run"] == 2 * 2 and report["prior"] == str(prior)

    # every run trained from the prior (2 small AdamW steps leave its bias near 0.5)
    for run in report["runs"]:
        recipe = load_recipe(out / "runs" / run / "config.yaml")
        assert (recipe.backbone.pretrained, recipe.train.batch_size) == (str(prior), 2)
        weights = out / "runs" / run / "checkpoints" / "step-000002" / "backbone"
        bias = load_safetensors(weights / "diffusion_pytorch_model.safetensors")["conv_out.bias"]
        np.testing.assert_allclose(bias.numpy(), PRIOR_BIAS, atol=0.01)

    # evaluation (and diagnose) on the held-out folder: seed 1, split test, not the training seed
    held_out, train = (read_json(out / "data" / d / "index.json") for d in ("held-out", "train"))
    assert {s["split"] for s in held_out["scenes"].values()} == {"test"}
    assert held_out["source"]["options"]["seed"] == 1
    assert train["source"]["options"]["seed"] == 0
    for run in ("baseline-seed0", "cameo-seed0"):
        results = read_json(out / f"evaluate-{run}" / "results.json")
        assert Path(results["config"]["dataset"]) == (out / "data" / "held-out").resolve()
        assert set(results["config"]["scenes"]) <= set(held_out["scenes"])
        evaluated = report["e_evaluate"][run]
        assert set(evaluated) == {"step", *driver().EVALUATE_METRICS}
        assert evaluated["copy_psnr"] == results["mean"]["copy_psnr"]
        assert read_json(out / f"diagnose-{run}" / "diagnose.json")["dataset"] == str(
            out / "data" / "held-out"
        )

    # the validation batch's lines: the runs' logged values, in the table and the plots
    logged = read_json_lines(out / "runs" / "baseline-seed0" / "metrics.jsonl")
    copy_line = next(line["val/line_copy_psnr"] for line in logged if "val/line_copy_psnr" in line)
    assert set(report["reference_lines_psnr"]) == {"flat", "copy", "reproject"}
    assert report["reference_lines_psnr"]["copy"] == pytest.approx(copy_line)
    assert "copy line" in done.stdout and "reproject line" in done.stdout
    assert set(report["d_ablations"]) == {"baseline", "cameo", "no-head"}
    assert (out / "precision_vs_psnr.png").is_file() and (
        out / "compare" / "val_psnr.png"
    ).is_file()

    # a longer study continues the runs from their checkpoints
    study = driver()
    resumed = study.train_command(
        study.Study(out, study.CPU_SMOKE, "cpu", prior), study.Job("baseline", 0, 4)
    )
    assert resumed[-2:] == ["--resume", "latest"]
