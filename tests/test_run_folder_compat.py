"""A run folder and an export written by an earlier cameo still load, resume, export and
diagnose.

`data/run-and-export-main-94f680a.tar.xz` (about 70 KB) holds what `cameo train` and `cameo
export` of main 94f680a wrote for 2 CPU steps of `quickstart-cpu` on the synthetic data of
`conftest.synthetic_dataset` (checkpoint and validation at step 2, EMA on), minus the bulk:
the TensorBoard events and the sample PNG are left out, and the three large safetensors
files (the backbone's weights, the EMA weights, the optimizer state; 12-25 MB each) are cut
to their header, which keeps every tensor's name, dtype and shape and the file's metadata.
Every other file is as written: JSON, YAML, metrics.jsonl, the RNG state, the alignment
head, the backbone's `cameo_extra.safetensors`. `old_run` unpacks it and refills each cut
file with seeded small non-negative values of the recorded dtypes and shapes (written with
`safetensors` itself, not with cameo), so the checks are of the format, not of the weights.
"""

from __future__ import annotations

import json
import shutil
import struct
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from cameo_cli.cli import main

ARCHIVE = Path(__file__).parent / "data" / "run-and-export-main-94f680a.tar.xz"
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}

pytestmark = pytest.mark.slow


def refill(path: Path, seed: int) -> None:
    """Write the tensors a header-only safetensors file names (small values >= 0, which
    suit weights and Adam moments alike), keeping its metadata."""
    header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + header_length])
    metadata = header.pop("__metadata__", None)
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        name: (torch.rand(entry["shape"], generator=generator) * 0.02).to(DTYPES[entry["dtype"]])
        for name, entry in header.items()
    }
    save_file(tensors, str(path), metadata=metadata)


def unpack(target: Path) -> Path:
    with tarfile.open(ARCHIVE, "r:xz") as archive:
        # the "data" filter where this Python has it (3.10.12+): plain files and folders only
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(target, **safe)
    for seed, path in enumerate(sorted(target.rglob("*.safetensors"))):
        header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
        if path.stat().st_size == 8 + header_length:
            refill(path, seed)
    return target


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack(tmp_path_factory.mktemp("main-94f680a"))


@pytest.fixture()
def old_run(old_tree: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(old_tree / "run", copy)
    return copy


def cameo(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_the_archive_is_what_main_wrote(old_tree: Path) -> None:
    run = old_tree / "run"
    checkpoint = run / "checkpoints" / "step-000002"
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2
    assert json.loads((old_tree / "export" / "model_index.json").read_text())["step"] == 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 2] and "val/psnr" in lines[2]
    assert json.loads((run / "meta.json").read_text())["git_commit"].startswith("94f680a")


def test_old_run_checkpoint_and_export_load_for_inference(old_tree: Path) -> None:
    from cameo_cli.runs.checkpoints import load_for_inference

    run = old_tree / "run"
    for source in (run, run / "checkpoints" / "step-000002", old_tree / "export"):
        loaded = load_for_inference(source)
        assert loaded.step == 2 and loaded.alignment is not None
        assert loaded.recipe.alignment.method == "cameo"
    ema = load_for_inference(run).backbone.state_dict()
    trained = load_for_inference(run, use_ema=False).backbone.state_dict()
    assert any(not torch.equal(ema[name], trained[name]) for name in trained)


def test_old_run_resumes(old_run: Path, synthetic_dataset: Path) -> None:
    result = cameo(
        "train", "--resume", "latest", "--output", old_run, "--steps", 3,
        "--dataset", synthetic_dataset,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (old_run / "checkpoints" / "step-000003" / "state.json").is_file()
    lines = [json.loads(x) for x in (old_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3]
    meta = json.loads((old_run / "meta.json").read_text())
    assert meta["git_commit"].startswith("94f680a") and len(meta["resumes"]) == 1


def test_old_run_exports(old_run: Path, tmp_path: Path) -> None:
    from cameo_cli.runs.checkpoints import load_for_inference

    out = tmp_path / "export"
    result = cameo("export", old_run, "--out", out)
    assert result.exit_code == 0, result.output
    assert load_for_inference(out).step == 2
    assert "| val/psnr | 8.2783 |" in (out / "README.md").read_text()  # from metrics.jsonl


def test_old_run_diagnoses(
    old_run: Path, synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAMEO_HOME", str(tmp_path / "home"))
    out = tmp_path / "diagnose"
    result = cameo(
        "diagnose", "--backbone", "cat3d", "--run", old_run, "--dataset", synthetic_dataset,
        "--layers", "10", "--scenes", "1", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    over = json.loads((out / "diagnose.json").read_text())["over_training"]
    assert [c["step"] for c in over["checkpoints"]] == [2]
    assert over["validation_psnr"] == [{"step": 2, "psnr": pytest.approx(8.278322219848633)}]
