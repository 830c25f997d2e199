"""`cameo evaluate`'s comparability choices: index frames, context-equal targets, scoring size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cameo_cli.cli import main
from cameo_cli.data.records import SceneData
from cameo_cli.data.synthetic import SyntheticSource
from cameo_cli.errors import CameoError
from cameo_cli.evaluate.protocol import (
    context_targets,
    index_in_positions,
    pixelsplat_resize,
    pixelsplat_views,
    read_index,
    without_context_targets,
)

# frame 2 of the source was dropped by prepare: positions 0 1 2 3 hold frames 0 1 3 4
SCENES = {"clip": {"num_frames": 4, "source_index": [0, 1, 3, 4]}}
PATH = Path("index.json")


def test_source_frame_numbers_are_translated_or_refused():
    pixelsplat_style = {"clip": {"context": [0, 4], "target": [3, 1]}}
    assert index_in_positions(pixelsplat_style, "source", SCENES, PATH) == {
        "clip": {"context": [0, 3], "target": [2, 1]}
    }
    assert index_in_positions(pixelsplat_style, "prepared", SCENES, PATH) == pixelsplat_style
    with pytest.raises(CameoError, match="lost frames in `cameo prepare`.*--index-frames"):
        index_in_positions(pixelsplat_style, None, SCENES, PATH)
    with pytest.raises(CameoError, match=r"source frames \[2\] were not kept"):
        index_in_positions({"clip": {"context": [0], "target": [2]}}, "source", SCENES, PATH)
    # nothing dropped: both readings agree, no question asked
    whole = {"clip": {"num_frames": 3, "source_index": [0, 1, 2]}}
    assert index_in_positions(pixelsplat_style, None, whole, PATH) == pixelsplat_style


def test_pixelsplat_index_is_read_as_released(tmp_path):
    """pixelSplat's evaluation_index_re10k.json lists clips it leaves out as null."""
    path = tmp_path / "evaluation_index_re10k.json"
    path.write_text(json.dumps({"a": {"context": [3, 60], "target": [10, 3]}, "b": None}))
    assert read_index(path, "source") == {"a": {"context": [3, 60], "target": [10, 3]}}
    with pytest.raises(CameoError, match="non-empty integer lists"):
        read_index(path, "prepared")
    path.write_text(json.dumps({"a": {"context": [3, 60], "target": []}}))
    with pytest.raises(CameoError, match="'a' has an empty context or target list"):
        read_index(path, "source")


def test_context_equal_targets_are_found_and_excluded():
    index = {
        "a": {"context": [0, 9], "target": [9, 4]},
        "b": {"context": [1, 5], "target": [5]},
        "c": {"context": [2, 6], "target": [3]},
    }
    assert context_targets(index) == {"a": [9], "b": [5]}
    assert without_context_targets(index) == {
        "a": {"context": [0, 9], "target": [4]},
        "c": {"context": [2, 6], "target": [3]},
    }


def test_pixelsplat_resize_covers_then_centre_crops():
    # 256 x 512: no scaling (256 / 256 = 1 > 256 / 512); the centre half is kept exactly
    image = np.zeros((1, 256, 512, 3), np.uint8)
    image[:, :, 128:384, 1] = 200
    out = pixelsplat_resize(image, Image.Resampling.LANCZOS)
    assert out.shape == (1, 256, 256, 3) and (out[..., 1] == 200).all() and out[..., 0].max() == 0
    # RealEstate10K's 360 x 640 -> 256 x 455, crop from column 99: the central 360 columns
    # of the source (140..499) land on columns 0.6..256.6
    image = np.zeros((1, 360, 640, 3), np.uint8)
    image[:, :, 140:500] = 255
    out = pixelsplat_resize(image, Image.Resampling.LANCZOS)
    assert out.shape == (1, 256, 256, 3) and (out[:, :, 3:253] == 255).all()


def test_pixelsplat_views_take_the_truth_from_the_stored_frames():
    stored = [np.full((360, 640, 3), 128, np.uint8)]
    mask = np.zeros((360, 640), bool)
    mask[:180] = True
    generated = torch.full((1, 3, 32, 32), 128 / 255)
    sample, truth, scored_mask = pixelsplat_views(generated, stored, [mask])
    assert sample.shape == truth.shape == (1, 3, 256, 256)
    assert torch.allclose(truth, torch.full_like(truth, 128 / 255))
    assert torch.allclose(sample, truth, atol=1 / 255)
    assert scored_mask.shape == (1, 256, 256)
    assert scored_mask[:, :127].all() and not scored_mask[:, 129:].any()


class DroppedFrame(SyntheticSource):
    """Synthetic scenes whose source frame 2 is lost (like an undecodable video frame)."""

    def load_scene(self, scene: str) -> SceneData:
        data = super().load_scene(scene)
        del data.frames[2]
        return data


@pytest.mark.slow
def test_evaluate_index_in_frame_numbers_after_a_dropped_frame(tiny_run: Path, tmp_path: Path):
    from rich.console import Console

    from cameo_cli.data.shards import prepare_dataset

    dataset = tmp_path / "dataset"
    source = DroppedFrame(scenes=1, resolution=32, frames=6, seed=1, split="test")
    prepare_dataset(source, dataset, console=Console(quiet=True))
    index = tmp_path / "pixelsplat.json"
    entries = {"synth-00000": {"context": [0, 4], "target": [3, 4]}, "left-out": None}
    index.write_text(json.dumps(entries))

    def evaluate(out: str, *args: str) -> object:
        common = ["--checkpoint", tiny_run, "--dataset", dataset, "--index", index]
        args = [*common, "--out", tmp_path / out, "--metrics", "psnr", "--steps", 1, *args]
        return CliRunner().invoke(main, ["evaluate", *map(str, args)])

    index_positions = tmp_path / "positions.json"
    index_positions.write_text(json.dumps({"synth-00000": entries["synth-00000"]}))
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            *map(str, ["--checkpoint", tiny_run, "--dataset", dataset, "--index", index_positions]),
            *map(str, ["--out", tmp_path / "refused", "--metrics", "psnr", "--steps", 1]),
        ],
    )
    assert result.exit_code == 2 and "--index-frames" in result.output

    result = evaluate("source", "--index-frames", "source")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "source" / "results.json").read_text())
    scene = results["per_scene"][0]
    frames = json.loads((dataset / "index.json").read_text())["scenes"]["synth-00000"]["frames"]
    assert [frames[i] for i in scene["context"]] == ["0", "4"]
    assert [frames[i] for i in scene["target"]] == ["3", "4"]
    counted = {"scenes": 1, "targets": 1, "excluded": False}
    assert results["config"]["context_targets"] == counted
    assert "1 target(s) in 1 scene(s) equal a context frame" in result.output

    result = evaluate(
        "excluded",
        "--index-frames",
        "source",
        "--exclude-context-targets",
        "--score-size",
        "pixelsplat",
        "--save-images",
    )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "excluded" / "results.json").read_text())
    assert [frames[i] for i in results["per_scene"][0]["target"]] == ["3"]
    assert results["views"] == 1 and results["config"]["score_size"] == "pixelsplat"
    assert results["config"]["context_targets"]["excluded"] is True
    assert np.isfinite(results["mean"]["psnr"])
    # scored at 256 x 256, saved at the sampling size beside its truth and cameras
    saved = tmp_path / "excluded" / "images" / "synth-00000"
    assert Image.open(saved / "target_0.png").size == Image.open(saved / "truth_0.png").size
    assert Image.open(saved / "target_0.png").size == (32, 32)
