"""The run folder (`cameo_cli.run_folder`): metrics.jsonl read with one policy for a bad line, in
every job; and a run folder and an export written by an earlier cameo still load, resume,
export and diagnose.

`data/run-and-export-main-94f680a.tar.xz` (about 70 KB) holds what `cameo train` and `cameo
export` of main 94f680a wrote for 2 CPU steps of `quickstart-cpu` on the synthetic data of
`conftest.synthetic_dataset` (checkpoint and validation at step 2, EMA on), minus the bulk:
the TensorBoard events and the sample PNG are left out, and the three large safetensors
files (the backbone's weights, the EMA weights, the optimizer state; 12-25 MB each) are cut
to their header, which keeps every tensor's name, dtype and shape and the file's metadata.
Every other file is as written: JSON, YAML, metrics.jsonl, the RNG state, the alignment
head, the backbone's `cameo_extra.safetensors`. `old_tree` unpacks it and refills each cut
file with seeded small non-negative values of the recorded dtypes and shapes (written with
`safetensors` itself, not with cameo), so the checks are of the format, not of the weights.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from cameo_cli.cli import main
from cameo_cli.errors import CameoError
from cameo_cli.run_folder.checkpoints import load_for_inference
from cameo_cli.run_folder.metrics import append_metrics, read_metrics, truncate_metrics

ARCHIVE = Path(__file__).parent / "data" / "run-and-export-main-94f680a.tar.xz"
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def test_metrics_reader_drops_a_cut_last_line_and_names_any_other_bad_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo\n{"step": 3, "loss": 0.3}\n')
    with pytest.raises(CameoError, match=f"^{re.escape(str(path))}:2: not a JSON line$"):
        read_metrics(tmp_path)
    for bad in ("[1, 2]", '{"loss": 0.4}', '{"step": "2"}'):
        path.write_text('{"step": 1}\n' + bad + '\n{"step": 3}\n')
        with pytest.raises(CameoError, match=f"^{re.escape(str(path))}:2: not a metrics line"):
            read_metrics(tmp_path)
    path.unlink()
    assert read_metrics(tmp_path, required=False) == []
    with pytest.raises(CameoError, match="not a training run \\(no metrics.jsonl\\)"):
        read_metrics(tmp_path)


def test_metrics_are_appended_as_json_lines_and_truncated_for_a_resume(tmp_path: Path) -> None:
    assert append_metrics(tmp_path, 1, {"loss": 0.5}) == {"loss": 0.5}
    assert append_metrics(tmp_path, 2, {"loss": float("nan"), "lr": 1}) == {"loss": None, "lr": 1.0}
    append_metrics(tmp_path, 3, {"loss": 0.25})
    written = (tmp_path / "metrics.jsonl").read_text()
    assert written == (
        '{"step": 1, "loss": 0.5}\n'
        '{"step": 2, "loss": null, "lr": 1.0}\n'
        '{"step": 3, "loss": 0.25}\n'
    )
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 4, "lo')  # a writer killed mid-line
    truncate_metrics(tmp_path, 2)
    assert (tmp_path / "metrics.jsonl").read_text() == written.rsplit('{"step": 3', 1)[0]
    truncate_metrics(tmp_path / "nothing", 2)  # no metrics file yet: nothing to do
    assert not (tmp_path / "nothing").exists()


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


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def test_a_bad_middle_metrics_line_is_one_error_in_every_job(
    old_run: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    metrics = old_run / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(lines[0] + lines[1][:40] + "\n" + lines[2])
    other = tmp_path / "other"
    shutil.copytree(old_run, other)
    before = listing(old_run)
    jobs = {
        "train --resume": ["train", "--resume", "latest", "--output", old_run, "--dataset",
                           synthetic_dataset],
        "compare": ["compare", old_run, other, "--out", tmp_path / "compare"],
        "diagnose --run": ["diagnose", "--backbone", "cat3d", "--run", old_run, "--dataset",
                           synthetic_dataset, "--out", tmp_path / "diagnose"],
        "export": ["export", old_run, "--out", tmp_path / "export"],
    }  # fmt: skip
    for job, args in jobs.items():
        result = cameo(*args)
        assert result.exit_code == 2, (job, result.output)
        assert result.output == f"Error: {metrics}:2: not a JSON line\n", job
        assert listing(old_run) == before, job
    assert not {"compare", "diagnose", "export"} & {p.name for p in tmp_path.iterdir()}


@pytest.mark.slow
def test_the_archive_is_what_main_wrote(old_tree: Path) -> None:
    run = old_tree / "run"
    checkpoint = run / "checkpoints" / "step-000002"
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2
    assert json.loads((old_tree / "export" / "model_index.json").read_text())["step"] == 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 2] and "val/psnr" in lines[2]
    assert json.loads((run / "meta.json").read_text())["git_commit"].startswith("94f680a")


@pytest.mark.slow
def test_old_run_checkpoint_and_export_load_for_inference(old_tree: Path) -> None:
    run = old_tree / "run"
    for source in (run, run / "checkpoints" / "step-000002", old_tree / "export"):
        loaded = load_for_inference(source)
        assert loaded.step == 2 and loaded.alignment is not None
        assert loaded.recipe.alignment.method == "cameo"
    ema = load_for_inference(run).backbone.state_dict()
    trained = load_for_inference(run, use_ema=False).backbone.state_dict()
    assert any(not torch.equal(ema[name], trained[name]) for name in trained)


@pytest.mark.slow
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


@pytest.mark.slow
def test_old_run_exports(old_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    result = cameo("export", old_run, "--out", out)
    assert result.exit_code == 0, result.output
    assert load_for_inference(out).step == 2
    assert "| val/psnr | 8.2783 |" in (out / "README.md").read_text()  # from metrics.jsonl


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_cameo_010_head_exports_under_the_methods_names(old_run: Path, tmp_path: Path) -> None:
    """cameo 0.1.0 saved one CAMEO head without the method's `losses.<layer>.` prefix, with
    metadata {"layer": ...} (and its EMA keys likewise): the export holds the method's names,
    so it loads again."""
    checkpoint = old_run / "checkpoints" / "step-000002"
    prefix = "losses.10."
    head = load_file(checkpoint / "alignment.safetensors")
    assert sorted(head) and all(name.startswith(prefix) for name in head)
    old_head = {name[len(prefix) :]: value for name, value in head.items()}
    save_file(old_head, str(checkpoint / "alignment.safetensors"), metadata={"layer": "10"})
    ema = load_file(checkpoint / "ema.safetensors")
    old_ema = {name.replace(f"alignment.{prefix}", "alignment."): v for name, v in ema.items()}
    save_file(old_ema, str(checkpoint / "ema.safetensors"))
    expected = load_for_inference(checkpoint).alignment.state_dict()
    assert torch.equal(expected[f"{prefix}head.0.weight"], ema[f"alignment.{prefix}head.0.weight"])

    out = tmp_path / "export"
    assert cameo("export", old_run, "--out", out).exit_code == 0
    exported = load_file(out / "alignment.safetensors")
    assert sorted(exported) == sorted(head)
    loaded = load_for_inference(out).alignment.state_dict()
    assert all(torch.equal(loaded[name], expected[name]) for name in head)
