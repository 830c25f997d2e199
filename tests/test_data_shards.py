"""Shards: atomic, resumable after SIGKILL, parallel workers give the same bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from cameo_cli.data.shards import load_index, sha256_file, verify_shards

REPO = Path(__file__).resolve().parents[1]
ARGS = ["prepare", "synthetic", "--scenes", "36", "--frames", "12", "--resolution", "32"]


def _prepare(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cameo_cli", *ARGS, "--scenes-per-shard", "2", "--out", str(out)]
    return subprocess.Popen([*cmd, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_index(tmp_path):
    reference = tmp_path / "reference"
    done = _prepare(reference, "--workers", "2")
    assert done.wait(timeout=300) == 0, done.stderr.read().decode()

    out = tmp_path / "interrupted"
    run = _prepare(out)
    deadline = time.time() + 120
    while len(list((out / "shards").glob("shard-*.json"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (out / "index.json").exists(), "the run finished before it was killed"
    # no partial shard under a final name: every shard file is complete and readable
    for shard in (out / "shards").glob("shard-*.safetensors"):
        with safe_open(str(shard), framework="numpy") as f:
            assert f.keys()
        manifest = shard.with_suffix(".json")
        if manifest.exists():
            assert json.loads(manifest.read_text())["sha256"] == sha256_file(shard)

    again = _prepare(out)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr.decode()
    assert "reused" in stderr.decode() and "reused 0" not in stderr.decode()
    assert not list((out / "shards").glob("*.tmp-*"))
    index, expected = load_index(out), load_index(reference)
    assert index["shards"] == expected["shards"]  # same files, same sha256
    assert index["scenes"] == expected["scenes"]
    assert verify_shards(out, index) == []
    assert (out / "eval_index.json").read_text() == (reference / "eval_index.json").read_text()


def test_a_corrupted_shard_is_rebuilt(synthetic_dataset, tmp_path):
    import shutil

    from rich.console import Console

    from cameo_cli.data.shards import prepare_dataset
    from cameo_cli.data.synthetic import SyntheticSource

    copy = tmp_path / "copy"
    shutil.copytree(synthetic_dataset, copy)
    index = load_index(copy)
    shard = copy / index["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])  # damaged after the fact
    assert verify_shards(copy, index) == [index["shards"][1]["file"]]
    source = SyntheticSource(
        scenes=3, resolution=32, frames=8, seed=0, geometry="depth", test_scenes=1
    )
    report = prepare_dataset(source, copy, scenes_per_shard=2, console=Console(quiet=True))
    assert (report.shards_reused, report.shards_written) == (1, 1)
    assert load_index(copy)["shards"] == index["shards"]
    assert verify_shards(copy, load_index(copy)) == []


def test_vggt_without_the_package_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    from cameo_cli.cli import main

    (tmp_path / "root" / "train").mkdir(parents=True)
    args = ["prepare", "re10k", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, [*args, "--geometry", "vggt"])
    assert result.exit_code == 2 and "--vggt-weights" in result.output
    result = CliRunner().invoke(
        main, [*args, "--geometry", "vggt", "--vggt-weights", str(tmp_path)]
    )
    assert result.exit_code == 2 and "vggt" in result.output and "pip install" in result.output


def test_frames_unlike_their_scene_are_skipped_with_the_reason(tmp_path):
    from rich.console import Console

    from cameo_cli.data.records import FrameData, SceneData, SceneSource
    from cameo_cli.data.shards import prepare_dataset

    class Uneven(SceneSource):
        dataset = "uneven"

        def options(self):
            return {}

        def list_scenes(self):
            return ["s"], []

        def load_scene(self, scene):
            def frame(name, image_hw=(8, 8), depth_hw=(8, 8)):
                return FrameData(
                    name,
                    np.zeros((*image_hw, 3), np.uint8),
                    np.array([[8.0, 0, 4], [0, 8, 4], [0, 0, 1]]),
                    np.eye(4),
                    depth=None if depth_hw is None else np.ones(depth_hw, np.float32),
                )

            frames = [frame("a"), frame("b"), frame("c", image_hw=(8, 9), depth_hw=(8, 9))]
            frames += [frame("d", depth_hw=(4, 4)), frame("e", depth_hw=None)]
            return SceneData(scene, frames)

    report = prepare_dataset(Uneven(), tmp_path / "o", console=Console(quiet=True))
    reasons = {s.item: s.reason for s in report.skipped}
    assert report.frames == 2 and set(reasons) == {"s/c", "s/d", "s/e", "s (evaluation)"}
    assert reasons["s (evaluation)"] == "2 frame(s): no target view between two context views"
    assert "differs from the scene's first frame" in reasons["s/c"]
    assert reasons["s/d"] == "depth of size (4, 4) for an image of (8, 8)"
    assert reasons["s/e"] == "no depth while other frames of the scene have one"


def test_two_preparations_never_write_one_folder(tmp_path):
    import fcntl

    from rich.console import Console

    from cameo_cli.data.shards import LOCK_FILE, prepare_dataset
    from cameo_cli.data.synthetic import SyntheticSource
    from cameo_cli.errors import CameoError

    out = tmp_path / "ds"
    out.mkdir()
    with open(out / LOCK_FILE, "a") as held:  # what a running preparation holds
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(CameoError, match="another `cameo prepare`"):
            prepare_dataset(SyntheticSource(scenes=1, resolution=16, frames=2), out)
    report = prepare_dataset(
        SyntheticSource(scenes=1, resolution=16, frames=2), out, console=Console(quiet=True)
    )
    assert report.scenes == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CameoError, match="not a cameo dataset"):
        prepare_dataset(SyntheticSource(scenes=1, resolution=16, frames=2), tmp_path / "other")
