"""NAVI reader: v1.0 / v1.5 layouts, cameras from quaternions, EXIF, disparity depth, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from cameo_cli import cameras
from cameo_cli.cli import main
from cameo_cli.data.dataset import MultiViewDataset
from cameo_cli.data.navi import NaviSource, decode_disparity
from cameo_cli.data.records import SkipScene
from cameo_cli.data.shards import prepare_dataset
from cameo_cli.errors import CameoError
from tests.navi_fixture import disparity, render_views, write_navi

QUIET = Console(quiet=True)
V10, V15 = "multiview_00_pixel4a", "multiview-01-pixel5"


@pytest.fixture(scope="module")
def navi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_navi(tmp_path_factory.mktemp("navi"), {V10: 5, V15: 3, "wild_set": 3})


def test_disparity_encoding_round_trip_and_invalid_zero(tmp_path: Path):
    depth = np.array([[0.0, 250.0], [400.0, 655.35]])
    path = tmp_path / "d.png"
    Image.fromarray(disparity(depth)).save(path)
    decoded = decode_disparity(path.read_bytes(), str(path))
    assert decoded[0, 0] == 0  # 0 = unknown
    assert decoded[1, 1] == pytest.approx(655.35)  # value 1000 exactly
    # one disparity step at depth z is z^2 / 655350 mm
    assert np.allclose(decoded[depth > 0], depth[depth > 0], atol=250**2 / 655350, rtol=0.003)


def test_both_layouts_cameras_exif_and_depth(navi_root: Path):
    scenes, skipped = NaviSource(navi_root).list_scenes()
    assert scenes == [f"toy_box__{V15}", f"toy_box__{V10}"] and skipped == []
    assert NaviSource(navi_root, split="wild_set").list_scenes()[0] == ["toy_box__wild_set"]
    assert len(NaviSource(navi_root, split="all").list_scenes()[0]) == 3
    data = NaviSource(navi_root).load_scene(f"toy_box__{V10}")
    assert data.metres_per_unit == 0.001 and data.split == "multiview" and not data.skipped
    for frame, view in zip(data.frames, render_views(5), strict=True):
        # EXIF orientation applied: the JPEG holds the image turned by 90 degrees
        assert frame.image.shape == (48, 64, 3)
        error = np.abs(frame.image.astype(float) - view.image).mean()
        assert error < 0.5 * np.abs(frame.image.astype(float) - view.image[::-1, ::-1]).mean()
        # translate(t) R(q) is the world-to-camera; K halved from the annotated 96 x 128
        assert np.allclose(frame.world_to_camera, view.world_to_camera, atol=1e-9)
        assert np.allclose(frame.intrinsics, view.intrinsics)
        known = view.depth > 0
        assert np.array_equal(frame.depth > 0, known) and np.array_equal(frame.mask, known)
        step = view.depth.max() ** 2 / 655350  # the disparity's resolution at that depth
        assert np.abs(frame.depth - view.depth)[known].max() <= step


def test_prepared_navi_point_maps_are_the_rendered_object(navi_root: Path, tmp_path: Path):
    report = prepare_dataset(NaviSource(navi_root), tmp_path / "out", console=QUIET)
    assert report.scenes == 2 and report.frames == 8 and not report.skipped
    dataset = MultiViewDataset(tmp_path / "out", num_views=3)
    meta = dataset.index["scenes"][f"toy_box__{V10}"]
    assert meta["metres_per_unit"] == 0.001 and meta["mask"]
    item = dataset.get_views(f"toy_box__{V10}", [0, 2, 4], num_refs=1)
    views = render_views(5)
    for position, k in enumerate((0, 2, 4)):
        valid = item["point_valid"][position].numpy()
        assert np.array_equal(valid, views[k].depth > 0)
        points = item["point_map"][position].permute(1, 2, 0).double().numpy()
        # float16 depth and the disparity's step: well under a millimetre at 300 mm
        assert np.abs(points - views[k].points)[valid].max() < 0.6


def _corrupt(root: Path) -> Path:
    write_navi(root, {V10: 4, V15: 3, "multiview_02_iphone": 2, "multiview_03_x": 2})
    scene = root / "toy_box" / V10
    annotations = json.loads((scene / "annotations.json").read_text())
    annotations[1]["camera"]["q"] = [0.0, 0.0, 0.0, 0.0]
    (scene / "annotations.json").write_text(json.dumps(annotations))
    depth = scene / "depth" / "002.png"
    depth.write_bytes(depth.read_bytes()[:60])
    (root / "toy_box" / V15 / "annotations.json").unlink()
    (root / "toy_box" / "multiview_02_iphone" / "annotations.json").write_text("[{")
    # a 90-degree-turned image (its EXIF orientation lost) does not fit the annotation
    image = root / "toy_box" / "multiview_03_x" / "images" / "000.jpg"
    Image.open(image).save(image, exif=Image.Exif())
    return root


def test_bad_input_is_skipped_with_the_file_named(tmp_path: Path):
    root = _corrupt(tmp_path / "navi")
    report = prepare_dataset(NaviSource(root), tmp_path / "out", console=QUIET)
    reasons = {s.item: s.reason for s in report.skipped}
    scene = root / "toy_box" / V10
    assert f"{scene / 'annotations.json'}: 001.jpg: camera q" in reasons[f"toy_box__{V10}/001"]
    assert "not a unit quaternion" in reasons[f"toy_box__{V10}/001"]
    assert reasons[f"toy_box__{V10}/002"].startswith(f"{scene / 'depth' / '002.png'}: unreadable")
    missing = root / "toy_box" / V15 / "annotations.json"
    assert reasons[f"toy_box__{V15}"] == f"{missing}: not found"
    malformed = root / "toy_box" / "multiview_02_iphone" / "annotations.json"
    assert reasons["toy_box__multiview_02_iphone"].startswith(f"{malformed}: invalid JSON")
    assert "only 1 usable frame" in reasons["toy_box__multiview_03_x"]
    turned = root / "toy_box" / "multiview_03_x" / "images" / "000.jpg"
    (skip,) = NaviSource(root).load_scene("toy_box__multiview_03_x").skipped
    assert skip.reason.startswith(f"{turned}: 48x64 image for an annotated 128x96")
    assert report.scenes == 1 and report.frames == 2  # frames 000 and 003 of V10


def test_quaternion_convention_is_wxyz():
    """A 90-degree turn about the camera's y axis written (w, x, y, z) puts +x at -z."""
    half = np.sqrt(0.5)
    rotation = cameras.quaternion_to_rotation(torch.tensor([half, 0.0, half, 0.0]).double())
    assert torch.allclose(rotation @ torch.tensor([1.0, 0, 0]).double(),
                          torch.tensor([0.0, 0, -1]).double(), atol=1e-12)  # fmt: skip


def test_cli_prepare_navi_and_refusals(navi_root: Path, tmp_path: Path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(main, ["prepare", "navi", "--root", str(navi_root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "index.json").read_text())["source"]["dataset"] == "navi"
    result = runner.invoke(main, ["prepare", "navi", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--root DIR is required" in result.output
    result = runner.invoke(
        main, ["prepare", "navi", "--root", str(navi_root), "--out", str(out), "--split", "x"]
    )
    assert result.exit_code == 2 and "--split must be multiview, wild_set or all" in result.output
    assert "Traceback" not in result.output


def test_disparity_png_of_the_wrong_kind(tmp_path: Path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(SkipScene, match=r"rgb.png: not a 16-bit depth PNG \(mode RGB\)"):
        decode_disparity(path.read_bytes(), str(path))
    with pytest.raises(CameoError, match="--geometry must be"):
        NaviSource(tmp_path, geometry="points")
