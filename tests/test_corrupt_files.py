"""Corrupt inputs through the CLI: one line naming the file, exit 2, nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cameo_cli.cli import main

pytestmark = pytest.mark.slow


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, to show that a failed job changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def fails_cleanly(args: list[object], bad_file: Path, workdir: Path, out: Path | None) -> str:
    """Run `cameo ARGS`; check exit 2, one line naming `bad_file`, no traceback, no output and
    no temporary file left under `workdir`. Return the message."""
    before = tree(workdir)
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert str(bad_file) in lines[0], lines[0]
    if out is not None:
        assert not out.exists()
    assert tree(workdir) == before
    strays = [p for p in workdir.rglob("*") if p.name.endswith(".tmp") or ".staging-" in p.name]
    assert strays == []
    return lines[0]


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.fixture
def dataset(synthetic_dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "dataset"
    shutil.copytree(synthetic_dataset, copy)
    return copy


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def latest_checkpoint(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step-*"))[-1]


def sample_args(run: Path, views: list[Path], cameras: Path, out: Path) -> list[object]:
    return [
        "sample",
        "--checkpoint",
        run,
        "--views",
        *views,
        "--cameras",
        cameras,
        "--orbit",
        2,
        "--steps",
        2,
        "--out",
        out,
    ]


def test_truncated_shard_stops_training(dataset: Path, tmp_path: Path) -> None:
    shard = sorted((dataset / "shards").glob("*.safetensors"))[0]
    truncate(shard, shard.stat().st_size // 2)
    out = tmp_path / "new-run"
    args = [
        "train",
        "--recipe",
        "quickstart-cpu",
        "--set",
        f"data.dataset={dataset}",
        "--steps",
        1,
        "--output",
        out,
    ]
    message = fails_cleanly(args, shard, tmp_path, out)
    assert "truncated" in message


@pytest.mark.parametrize("damage", ["truncated", "not-safetensors"])
def test_broken_weights_stop_sampling_and_evaluation(
    damage: str, run_copy: Path, dataset: Path, sample_inputs: Path, tmp_path: Path
) -> None:
    weights = next(latest_checkpoint(run_copy).glob("backbone/*.safetensors"))
    if damage == "truncated":
        truncate(weights, weights.stat().st_size - 1000)
    else:
        weights.write_bytes(b"not safetensors at all")
    views = [sample_inputs / "view0.png", sample_inputs / "view1.png"]
    out = tmp_path / "views"
    fails_cleanly(
        sample_args(run_copy, views, sample_inputs / "refs.json", out), weights, tmp_path, out
    )
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", run_copy, "--dataset", dataset, "--limit", 1, "--out", out]
    fails_cleanly(args, weights, tmp_path, out)


def test_corrupt_progress_file_stops_sampling_and_resume(
    run_copy: Path, sample_inputs: Path, tmp_path: Path
) -> None:
    state = latest_checkpoint(run_copy) / "state.json"
    state.write_text('{"step": 4, "data')
    views = [sample_inputs / "view0.png", sample_inputs / "view1.png"]
    out = tmp_path / "views"
    message = fails_cleanly(
        sample_args(run_copy, views, sample_inputs / "refs.json", out), state, tmp_path, out
    )
    assert "invalid JSON" in message
    fails_cleanly(["train", "--resume", "latest", "--output", run_copy], state, tmp_path, None)


@pytest.mark.parametrize("damage", ["random-bytes", "truncated"])
def test_unreadable_view_image_stops_sampling(
    damage: str, tiny_run: Path, sample_inputs: Path, tmp_path: Path
) -> None:
    image = tmp_path / "view0.png"
    good = (sample_inputs / "view0.png").read_bytes()
    image.write_bytes(bytes(range(256)) * 4 if damage == "random-bytes" else good[: len(good) // 2])
    out = tmp_path / "views"
    args = sample_args(
        tiny_run, [image, sample_inputs / "view1.png"], sample_inputs / "refs.json", out
    )
    message = fails_cleanly(args, image, tmp_path, out)
    assert "cannot read the image" in message
