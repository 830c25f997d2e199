"""`cameo sample` end to end on a tiny trained run, and its bad-input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from cameo_cli.camera_files import read_cameras
from cameo_cli.cli import main

pytestmark = pytest.mark.slow


def run(*args: object) -> object:
    return CliRunner().invoke(main, ["sample", *map(str, args)])


def base_args(tiny_run: Path, sample_inputs: Path, out: Path, *extra: object) -> list[object]:
    views = [sample_inputs / "view0.png", sample_inputs / "view1.png"]
    return [
        "--checkpoint",
        tiny_run,
        "--views",
        *views,
        "--cameras",
        sample_inputs / "refs.json",
        "--out",
        out,
        "--steps",
        3,
        *extra,
    ]


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_sample_writes_targets_sheet_cameras_and_video(
    tiny_run: Path, sample_inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = base_args(
        tiny_run, sample_inputs, out, "--targets", sample_inputs / "targets.json", "--seed", 7
    )
    result = run(*args, "--video", "--video-format", "gif")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "cameras.json",
        "contact_sheet.png",
        "sample.json",
        "target_000.png",
        "target_001.png",
        "target_002.png",
        "trajectory.gif",
    ]
    for i in range(3):
        assert read_png(out / f"target_{i:03d}.png").shape == (32, 32, 3)
    with Image.open(out / "trajectory.gif") as gif:
        assert gif.n_frames == 3
    # the cameras written back are the sample_inputs' (the OpenGL target file read as OpenCV)
    written = read_cameras(out / "cameras.json")
    expected = torch.cat(
        [
            read_cameras(sample_inputs / "refs.json").world_to_camera,
            read_cameras(sample_inputs / "targets.json").world_to_camera,
        ]
    )
    torch.testing.assert_close(written.world_to_camera, expected, atol=1e-6, rtol=0)
    meta = json.loads((out / "sample.json").read_text())
    assert (meta["steps"], meta["seed"], meta["guidance"], meta["resolution"]) == (3, 7, 2.0, 32)

    same = tmp_path / "same"
    assert (
        run(
            *base_args(
                tiny_run,
                sample_inputs,
                same,
                "--targets",
                sample_inputs / "targets.json",
                "--seed",
                7,
            )
        ).exit_code
        == 0
    )
    other = tmp_path / "other"
    assert (
        run(
            *base_args(
                tiny_run,
                sample_inputs,
                other,
                "--targets",
                sample_inputs / "targets.json",
                "--seed",
                8,
            )
        ).exit_code
        == 0
    )
    for i in range(3):
        name = f"target_{i:03d}.png"
        assert np.array_equal(read_png(out / name), read_png(same / name))
    assert not all(
        np.array_equal(
            read_png(out / f"target_{i:03d}.png"), read_png(other / f"target_{i:03d}.png")
        )
        for i in range(3)
    )


def test_orbit_with_re10k_cameras_and_mp4(
    tiny_run: Path, sample_inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "orbit"
    args = base_args(tiny_run, sample_inputs, out, "--orbit", 5, "--video")
    args[args.index(sample_inputs / "refs.json")] = sample_inputs / "refs.txt"
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("target_*.png"))) == 5
    with av.open(str(out / "trajectory.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5


@pytest.fixture(scope="module")
def other_backbone_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run's checkpoint with a recipe that names another backbone."""
    run_copy = tmp_path_factory.mktemp("mismatch") / "run"
    shutil.copytree(tiny_run, run_copy)
    for config in run_copy.glob("checkpoints/*/config.yaml"):
        recipe = yaml.safe_load(config.read_text())
        recipe["backbone"]["name"] = "hunyuan-dit"
        config.write_text(yaml.safe_dump(recipe))
    return run_copy


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("count", "3 cameras for 2 images"),
        ("unreadable", "cannot read the image"),
        ("missing_image", "image not found"),
        ("targets", "19 numbers"),
        ("two_targets", "exactly one of --targets"),
        ("backbone", "holds a 'cat3d' backbone but its recipe names 'hunyuan-dit'"),
        ("not_empty", "folder is not empty"),
        ("checkpoint", "no such run or checkpoint folder"),
        ("depth_file", "bad.npy: cannot read the .npy depth map"),
        ("depth_size", "small.npy: depth map is 16x16, its image is 32x32"),
        ("depth_count", "--depths: 1 depth maps for 2 --views"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(
    case: str,
    message: str,
    tiny_run: Path,
    other_backbone_run: Path,
    sample_inputs: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    args = base_args(tiny_run, sample_inputs, out, "--targets", sample_inputs / "targets.json")
    if case == "count":
        three = json.loads((sample_inputs / "refs.json").read_text())
        three["cameras"].append(three["cameras"][0] | {"name": "extra"})
        (tmp_path / "three.json").write_text(json.dumps(three))
        args[args.index(sample_inputs / "refs.json")] = tmp_path / "three.json"
    elif case == "unreadable":
        (tmp_path / "broken.png").write_text("not an image")
        args[args.index(sample_inputs / "view1.png")] = tmp_path / "broken.png"
    elif case == "missing_image":
        args[args.index(sample_inputs / "view1.png")] = tmp_path / "absent.png"
    elif case == "targets":
        (tmp_path / "targets.txt").write_text("url\n1 2 3 4\n")
        args[args.index(sample_inputs / "targets.json")] = tmp_path / "targets.txt"
    elif case == "two_targets":
        args += ["--orbit", 3]
    elif case == "backbone":
        args[args.index(tiny_run)] = other_backbone_run
    elif case == "not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "checkpoint":
        args[args.index(tiny_run)] = tmp_path / "no-run"
    elif case == "depth_file":
        (tmp_path / "bad.npy").write_text("not an array")
        np.save(tmp_path / "good.npy", np.ones((32, 32), np.float32))
        args += ["--depths", tmp_path / "good.npy", tmp_path / "bad.npy"]
    elif case == "depth_size":
        np.save(tmp_path / "good.npy", np.ones((32, 32), np.float32))
        np.save(tmp_path / "small.npy", np.ones((16, 16), np.float32))
        args += ["--depths", tmp_path / "good.npy", tmp_path / "small.npy"]
    elif case == "depth_count":
        np.save(tmp_path / "good.npy", np.ones((32, 32), np.float32))
        args += ["--depths", tmp_path / "good.npy"]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    if case == "not_empty":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind


def test_sample_with_reference_depths(tiny_run: Path, sample_inputs: Path, tmp_path: Path) -> None:
    """`--depths a.npy b.npy` (one per view, greedy like --views) reaches the pipeline."""
    depths = [tmp_path / "d0.npy", tmp_path / "d1.npy"]
    for path in depths:
        np.save(path, np.full((32, 32), 2.5, np.float32))
    out = tmp_path / "out"
    args = base_args(tiny_run, sample_inputs, out, "--depths", *depths)
    result = run(*args, "--targets", sample_inputs / "targets.json")
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "sample.json").read_text())["depths"]
    assert recorded == [str(path) for path in depths]
