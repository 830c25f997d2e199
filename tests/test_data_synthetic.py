"""The procedural generator: exact geometry, determinism, and `cameo prepare synthetic`."""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner

from cameo_cli import cameras
from cameo_cli.cli import main
from cameo_cli.data.synthetic import SyntheticSource, look_at, render_scene
from cameo_cli.image_metrics import high_frequency_energy


def test_render_is_deterministic_and_seed_dependent():
    a = render_scene(seed=3, index=1, resolution=32, num_frames=4)
    b = render_scene(seed=3, index=1, resolution=32, num_frames=4)
    c = render_scene(seed=4, index=1, resolution=32, num_frames=4)
    for key in ("images", "depth", "point_map", "intrinsics", "world_to_camera"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (4, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.images.std() > 20  # textured, not flat


def test_point_maps_project_to_their_pixel_centres():
    """Independent check through cameras.py: every rendered point lands on its own pixel."""
    render = render_scene(seed=0, index=2, resolution=48, num_frames=3)
    K = torch.from_numpy(render.intrinsics)
    w2c = torch.from_numpy(render.world_to_camera)
    points = torch.from_numpy(render.point_map.astype(np.float64)).reshape(3, -1, 3)
    pixels, depth = cameras.project_points(points, K, w2c)
    centres = cameras.pixel_centers(48, 48, dtype=torch.float64)[..., :2].reshape(-1, 2)
    assert (pixels - centres).abs().max() < 1e-3
    assert (depth - torch.from_numpy(render.depth).reshape(3, -1).double()).abs().max() < 1e-4
    unprojected = cameras.unproject_depth(torch.from_numpy(render.depth).double(), K, w2c)
    assert (unprojected.permute(0, 2, 3, 1) - torch.from_numpy(render.point_map)).abs().max() < 1e-4


def test_cameras_are_orthonormal_and_look_at_the_target():
    w2c = look_at(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.5, 0.0]))
    assert np.allclose(w2c[:3, :3] @ w2c[:3, :3].T, np.eye(3))
    assert np.isclose(np.linalg.det(w2c[:3, :3]), 1.0)
    target_cam = w2c[:3, :3] @ np.array([0.0, 0.5, 0.0]) + w2c[:3, 3]
    assert np.allclose(target_cam[:2], 0) and target_cam[2] > 0
    up_cam = w2c[:3, :3] @ np.array([0.0, 1.0, 0.0])
    assert up_cam[1] < 0  # world up is image up (OpenCV y points down)


def test_neighbouring_frames_overlap():
    render = render_scene(seed=0, index=0, resolution=32, num_frames=16)
    K = torch.from_numpy(render.intrinsics[1])
    w2c = torch.from_numpy(render.world_to_camera[1])
    points = torch.from_numpy(render.point_map[0].astype(np.float64)).reshape(-1, 3)
    pixels, depth = cameras.project_points(points, K, w2c)
    inside = (depth > 0) & (pixels >= 0).all(-1) & (pixels < 32).all(-1)
    assert inside.float().mean() > 0.7


def test_texture_scale_coarsens_textures_and_keeps_the_geometry():
    """--texture-scale: the same rooms and cameras (geometry bit for bit), a texture period
    X times as long, so far less high-frequency energy at the same resolution."""
    default = render_scene(seed=0, index=0, resolution=32, num_frames=3)
    same = render_scene(seed=0, index=0, resolution=32, num_frames=3, texture_scale=1.0)
    coarse = render_scene(seed=0, index=0, resolution=32, num_frames=3, texture_scale=4.0)
    assert np.array_equal(default.images, same.images)
    for key in ("depth", "point_map", "intrinsics", "world_to_camera"):
        assert np.array_equal(getattr(default, key), getattr(coarse, key))
    energy = [
        high_frequency_energy(torch.from_numpy(r.images).permute(0, 3, 1, 2) / 255.0).sum()
        for r in (default, coarse)
    ]
    assert energy[1] < 0.5 * energy[0]
    # recorded in the dataset options only when it changes the pixels (old folders resume)
    assert "texture_scale" not in SyntheticSource().options()
    assert SyntheticSource(texture_scale=4.0).options()["texture_scale"] == 4.0


def test_prepare_synthetic_cli(tmp_path):
    out = tmp_path / "syn"
    args = ["prepare", "synthetic", "--scenes", "3", "--test-scenes", "1", "--frames", "4"]
    args += ["--resolution", "32"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert index["num_scenes"] == 4 and index["num_frames"] == 16
    assert index["source"]["dataset"] == "synthetic"
    assert all(s["geometry"] == ["depth_fp16"] for s in index["scenes"].values())
    evaluation = json.loads((out / "eval_index.json").read_text())
    assert set(evaluation) == {"synth-test-00000"}  # the held-out scene only
    # a rerun with the same options reuses every shard; other options need --overwrite
    again = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert again.exit_code == 0 and "reused 1" in again.output
    other = CliRunner().invoke(main, [*args[:-1], "64", "--out", str(out)])
    assert other.exit_code == 2 and "--overwrite" in other.output
    replaced = CliRunner().invoke(main, [*args[:-1], "64", "--out", str(out), "--overwrite"])
    assert replaced.exit_code == 0
    assert json.loads((out / "index.json").read_text())["scenes"]["synth-00000"]["width"] == 64


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    result = CliRunner().invoke(main, ["prepare", "imagenet", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "unknown dataset 'imagenet'" in result.output
    assert all(name in result.output for name in ("re10k", "dtu", "synthetic"))


def test_synthetic_dataset_fixture(synthetic_dataset):
    index = json.loads((synthetic_dataset / "index.json").read_text())
    assert index["num_scenes"] == 4 and len(index["shards"]) == 2
    assert [m["split"] for m in index["scenes"].values()] == ["train"] * 3 + ["test"]
