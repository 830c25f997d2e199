"""`cameo prepare --part I/N` then `--merge`: the same dataset as one process (scenes, frames,
the checksum of every stored array), parts written at the same time, a torchrun rank's part
and GPU, and bad input refused in one line with nothing written over."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console
from safetensors import safe_open

from cameo_cli.cli import main
from cameo_cli.data.merge import merge_parts
from cameo_cli.data.parts import Part, parse_part, part_from_environment
from cameo_cli.data.records import SceneData, SceneSource, Skip
from cameo_cli.data.shards import load_index, prepare_dataset
from cameo_cli.data.synthetic import render_scene, scene_data
from cameo_cli.data.vggt_scenes import VGGTSettings
from cameo_cli.errors import CameoError
from tests import vggt_standin

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = [
    "synthetic",
    "--scenes",
    "5",
    "--test-scenes",
    "2",
    "--frames",
    "4",
    "--resolution",
    "16",
]
SYNTHETIC += ["--scenes-per-shard", "2"]
QUIET = Console(quiet=True)


def _cli(*args: str):
    return CliRunner().invoke(main, ["prepare", *args])


def _arrays(root: Path) -> dict[str, str]:
    """sha256 of every stored array (images are PNG bytes) by key, read through index.json."""
    index = load_index(root)
    digests = {}
    for shard in index["shards"]:
        with safe_open(str(root / shard["file"]), framework="numpy") as f:
            for key in f.keys():
                digests[key] = hashlib.sha256(f.get_tensor(key).tobytes()).hexdigest()
    return digests


def _without_shard(index: dict) -> dict:
    return {scene: {k: v for k, v in m.items() if k != "shard"} for scene, m in index.items()}


def _same_dataset(merged: Path, single: Path, arrays: bool = True) -> None:
    a, b = load_index(merged), load_index(single)
    assert list(a["scenes"]) == list(b["scenes"])  # also the order (training items)
    if arrays:
        assert _without_shard(a["scenes"]) == _without_shard(b["scenes"])
        assert _arrays(merged) == _arrays(single)
    else:  # VGGT: the same scenes and frames (its depth is not deterministic)
        assert {s: m["frames"] for s, m in a["scenes"].items()} == {
            s: m["frames"] for s, m in b["scenes"].items()
        }
    assert a["num_frames"] == b["num_frames"] and a["source"] == b["source"]
    assert json.loads((merged / "eval_index.json").read_text()) == json.loads(
        (single / "eval_index.json").read_text()
    )


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "data"
    result = _cli(*SYNTHETIC, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_the_partition_is_a_hash_of_the_name_split_evenly():
    # sha256("synth-00001") starts with bytes whose 64-bit value is odd: part 1 of 2 (hand
    # check of the rule in parts.py, not of the code's own output)
    first = int.from_bytes(hashlib.sha256(b"synth-00001").digest()[:8], "big")
    assert Part(first % 2 + 1, 2).holds("synth-00001")
    names = [f"clip-{i}" for i in range(4000)]
    sizes = [sum(Part(i, 4).holds(n) for n in names) for i in range(1, 5)]
    assert sum(sizes) == 4000 and min(sizes) > 900  # every scene in exactly one part, balanced


def test_two_parts_then_merge_equal_one_process(single, tmp_path):
    out = tmp_path / "parts"
    for part in ("1/2", "2/2"):
        result = _cli(*SYNTHETIC, "--out", str(out), "--part", part)
        assert result.exit_code == 0, result.output
        assert f"part {part} done" in result.output
    sizes = [load_index(Part(i, 2).folder(out))["num_scenes"] for i in (1, 2)]
    assert min(sizes) >= 1 and sum(sizes) == 7  # 5 training scenes and 2 held-out ones
    again = _cli(*SYNTHETIC, "--out", str(out), "--part", "2/2")  # resumable per part
    assert again.exit_code == 0 and "written 0" in again.output
    result = _cli("--merge", str(out))
    assert result.exit_code == 0, result.output
    _same_dataset(out, single)
    assert [s["file"].split("/")[0] for s in load_index(out)["shards"]][0] == "part-00001-of-00002"
    from cameo_cli.data.dataset import MultiViewDataset

    item = MultiViewDataset(out, num_views=4)[0]  # the reader follows the part folders
    reference = MultiViewDataset(single, num_views=4)[0]
    assert torch.equal(item["images"], reference["images"])
    assert torch.equal(item["point_map"], reference["point_map"])


def test_parts_written_at_the_same_time_do_not_harm_each_other(single, tmp_path):
    out = tmp_path / "parts"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "cameo_cli", "prepare", *SYNTHETIC, "--out", str(out)]
            + ["--part", part],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for part in ("1/2", "2/2")
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr.decode()
    merge_parts(out)
    _same_dataset(out, single)


def test_a_torchrun_rank_prepares_its_part_with_its_own_gpu(tmp_path, monkeypatch):
    from cameo_cli.geometry import vggt

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert part_from_environment() == Part(2, 2)
    result = _cli(*SYNTHETIC, "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert load_index(tmp_path / "out" / "part-00002-of-00002")["part"]["index"] == 2
    assert not (tmp_path / "out" / "part-00001-of-00002").exists()
    refused = _cli(*SYNTHETIC, "--out", str(tmp_path / "out"), "--part", "1/2")
    assert refused.exit_code == 2 and "RANK + 1" in refused.output

    vggt_standin.install(monkeypatch)  # VGGTDepth on this rank's device, not the default cuda
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    devices = []
    monkeypatch.setattr(vggt, "load_vggt", lambda weights, device: devices.append(device))
    vggt.VGGTDepth(tmp_path / "weights")
    assert devices == [torch.device("cuda", 1)]
    monkeypatch.delenv("LOCAL_RANK")
    assert vggt.default_device() == torch.device("cuda", 0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert part_from_environment() is None


class Renders(SceneSource):
    """Three scenes, each the same render (what the stand-in VGGT recognises)."""

    dataset = "renders"

    def __init__(self, render) -> None:
        self.render = render

    def options(self) -> dict:
        return {}

    def list_scenes(self) -> tuple[list[str], list[Skip]]:
        return ["scene-a", "scene-b", "scene-c"], []

    def load_scene(self, scene: str) -> SceneData:
        return scene_data(self.render, scene, with_depth=False)


def test_vggt_parts_then_merge_keep_the_scenes_and_frames(tmp_path, monkeypatch):
    render = render_scene(seed=3, index=0, resolution=32, num_frames=8)
    vggt_standin.install(monkeypatch, render)
    weights = tmp_path / "model.safetensors"
    vggt_standin.save_weights(weights)
    source = Renders(render)
    settings = VGGTSettings(window=8, overlap=4)
    options = {"vggt_weights": weights, "vggt_settings": settings, "console": QUIET}
    prepare_dataset(source, tmp_path / "single", **options)
    assert load_index(tmp_path / "single")["num_scenes"] == 3
    parts = [Part(i, 2) for i in (1, 2)]
    assert all(any(p.holds(s) for s in source.list_scenes()[0]) for p in parts)
    for part in parts:
        prepare_dataset(source, tmp_path / "parts", part=part, **options)
    merge_parts(tmp_path / "parts")
    _same_dataset(tmp_path / "parts", tmp_path / "single", arrays=False)


class Crashing(SceneSource):
    dataset = "crashing"

    def options(self) -> dict:
        return {}

    def list_scenes(self) -> tuple[list[str], list[Skip]]:
        return ["fine", "broken"], []

    def load_scene(self, scene: str) -> SceneData:
        if scene == "broken":
            raise RuntimeError("CUDA out of memory")
        return scene_data(render_scene(0, 0, 16, 2), scene, with_depth=True)


def test_a_failing_part_names_the_scene(tmp_path):
    with pytest.raises(CameoError, match="scene 'broken' failed .*CUDA out of memory"):
        prepare_dataset(Crashing(), tmp_path, scenes_per_shard=1, console=QUIET)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("3/2", "1 <= I <= N"), ("0/2", "counted from 1"), ("1of2", "expected I/N"), ("1/0", "<=")],
)
def test_bad_parts_are_refused_in_one_line(text, problem, tmp_path):
    with pytest.raises(CameoError, match=problem):
        parse_part(text)
    result = _cli(*SYNTHETIC, "--out", str(tmp_path / "out"), "--part", text)
    assert result.exit_code == 2 and problem in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_merge_with_a_part_missing_or_unlike_the_others_writes_nothing(tmp_path):
    out = tmp_path / "parts"
    assert _cli(*SYNTHETIC, "--out", str(out), "--part", "1/2").exit_code == 0
    result = _cli("--merge", str(out))
    assert result.exit_code == 2 and "part 2/2 missing" in result.output
    assert not (out / "index.json").exists()

    (out / "part-00002-of-00002").mkdir()  # started, not finished
    result = _cli("--merge", str(out))
    assert result.exit_code == 2 and "part 2/2 is not finished" in result.output

    assert _cli(*SYNTHETIC, "--out", str(out), "--part", "2/2").exit_code == 0
    assert _cli("--merge", str(out)).exit_code == 0
    merged = (out / "index.json").read_bytes(), (out / "eval_index.json").read_bytes()
    other = [a if a != "4" else "6" for a in SYNTHETIC]  # 6 frames: other options
    assert _cli(*other, "--out", str(out), "--part", "2/2", "--overwrite").exit_code == 0
    result = _cli("--merge", str(out))
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "part 2/2 was prepared with another dataset and options" in result.output
    assert ((out / "index.json").read_bytes(), (out / "eval_index.json").read_bytes()) == merged
    assert _cli(*SYNTHETIC, "--out", str(out), "--part", "2/2", "--overwrite").exit_code == 0
    part_index = out / "part-00002-of-00002" / "index.json"
    index = json.loads(part_index.read_text())
    index["part"]["listing_sha256"] = "0" * 64  # cut from another listing of the raw data
    part_index.write_text(json.dumps(index))
    result = _cli("--merge", str(out))
    assert result.exit_code == 2 and "another scene listing" in result.output
    assert ((out / "index.json").read_bytes(), (out / "eval_index.json").read_bytes()) == merged

    assert _cli(*SYNTHETIC, "--out", str(out / "x"), "--part", "1/3").exit_code == 0
    result = _cli("--merge", str(out / "x"))
    assert result.exit_code == 2 and "part 2/3, 3/3 missing" in result.output
    (out / "x" / "part-00001-of-00002").mkdir()
    result = _cli("--merge", str(out / "x"))
    assert result.exit_code == 2 and "different splits" in result.output
    assert _cli("synthetic", "--merge", str(out)).exit_code == 2
