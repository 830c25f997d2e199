"""DTU: the real MVSNet camera file, projection-matrix decomposition, both folder layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from cameo_cli import cameras
from cameo_cli.data.dataset import MultiViewDataset, load_eval_index
from cameo_cli.data.dtu import (
    TEST_VIEWS,
    DTUSource,
    decompose_projection,
    parse_cam_file,
    read_pfm,
)
from cameo_cli.data.shards import prepare_dataset

SAMPLE = Path("/work/shared/data/dtu-cam-sample.txt")
if not SAMPLE.is_file():
    SAMPLE = Path(__file__).parent / "data" / "dtu-cam-sample.txt"
QUIET = Console(quiet=True)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    return q if np.linalg.det(q) > 0 else -q


def test_sample_camera_parses_and_projects_like_its_3x4_product():
    w2c, K, depth_range = parse_cam_file(SAMPLE)
    assert depth_range == (425.0, 2.5)
    assert K[0, 0] == pytest.approx(2892.33) and K[1, 2] == pytest.approx(619.071)
    assert np.allclose(w2c[:3, :3] @ w2c[:3, :3].T, np.eye(3), atol=1e-5)
    P = K @ w2c[:3]
    rng = np.random.default_rng(0)
    centre = -w2c[:3, :3].T @ w2c[:3, 3]
    forward = w2c[2, :3]
    points = centre + forward * rng.uniform(450, 900, (100, 1)) + rng.normal(0, 60, (100, 3))
    homogeneous = np.c_[points, np.ones(100)] @ P.T
    expected = homogeneous[:, :2] / homogeneous[:, 2:]
    pixels, depth = cameras.project_points(
        torch.from_numpy(points), torch.from_numpy(K), torch.from_numpy(w2c)
    )
    assert np.allclose(pixels.numpy(), expected, atol=1e-6) and (depth > 0).all()
    # inside the 1600 x 1200 image near the optical axis
    on_axis = P @ np.r_[centre + 600 * forward, 1.0]
    assert 0 < on_axis[0] / on_axis[2] < 1600 and 0 < on_axis[1] / on_axis[2] < 1200


def test_projection_decomposition_recovers_K_R_t():
    w2c, K, _ = parse_cam_file(SAMPLE)
    P = K @ w2c[:3]
    for scale in (1.0, -3.5, 1e-3):
        K2, w2c2 = decompose_projection(scale * P)
        # the file's rotation has 6 digits, so K and R are recovered to that precision ...
        assert np.allclose(K2, K, rtol=1e-6, atol=1e-3)
        assert np.allclose(w2c2, w2c, rtol=1e-5, atol=1e-4)
        # ... while the product is reproduced exactly (up to the projective scale)
        product = K2 @ w2c2[:3]
        assert np.allclose(product * (P[2, 0] / product[2, 0]), P, rtol=1e-10)
    rng = np.random.default_rng(1)
    for _ in range(20):
        K = np.array(
            [
                [rng.uniform(200, 900), rng.uniform(-2, 2), rng.uniform(100, 300)],
                [0, rng.uniform(200, 900), rng.uniform(100, 300)],
                [0, 0, 1],
            ]
        )
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = _rotation(rng), rng.normal(size=3)
        K2, w2c2 = decompose_projection(np.r_[K @ w2c[:3], [[0, 0, 0, 1]]])
        assert np.allclose(K2, K) and np.allclose(w2c2, w2c)


def _image(path: Path, size=(160, 120), value=0) -> None:
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _write_pfm(path: Path, depth: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(b"Pf\n%d %d\n-1.0\n" % (depth.shape[1], depth.shape[0]))
        f.write(np.ascontiguousarray(depth[::-1], dtype="<f4").tobytes())


def test_mvsnet_layout_with_masks_depth_and_a_bad_image(tmp_path):
    root = tmp_path / "dtu"
    scan = root / "scan8"
    for sub in ("cams", "images", "depths", "mask"):
        (scan / sub).mkdir(parents=True)
    text = SAMPLE.read_text()
    for view in (22, 25, 28, 1, 2, 9):
        (scan / "cams" / f"{view:08d}_cam.txt").write_text(text)
        _image(scan / "images" / f"{view:08d}.png", value=view)
        Image.fromarray(np.full((120, 160), 255, np.uint8)).save(scan / "mask" / f"{view:03d}.png")
        _write_pfm(scan / "depths" / f"{view:08d}.pfm", np.full((60, 80), 500.0 + view))
    bad = scan / "images" / "00000009.png"
    bad.write_bytes(bad.read_bytes()[:150])
    source = DTUSource(root, split="test", geometry="depth")
    out = tmp_path / "out"
    report = prepare_dataset(source, out, console=QUIET)
    assert report.scenes == 1 and report.frames == 5
    reasons = {s.item: s.reason for s in report.skipped}
    assert "unreadable image" in reasons["scan8/9"]
    assert reasons["scan21"] == "test scan not found under --root"
    assert len(reasons) == 1 + 14
    ds = MultiViewDataset(out, num_views=3)
    assert ds.has_geometry and ds.has_masks
    assert ds.index["scenes"]["scan8"]["metres_per_unit"] == 0.001  # DTU's millimetres
    views = load_eval_index(out)["scan8"]
    frames = ds.index["scenes"]["scan8"]["frames"]
    assert [frames[i] for i in views["context"]] == ["25", "22", "28"]
    assert [int(frames[i]) for i in views["target"]] == [v for v in TEST_VIEWS if v in (1, 2)]
    item = ds.get_views("scan8", views["context"], num_refs=3)
    _, K, _ = parse_cam_file(SAMPLE)
    assert np.allclose(item["intrinsics"][0].numpy(), K * [[0.1], [0.1], [1]], rtol=1e-6)
    assert item["object_mask"].shape == (3, 120, 160) and item["object_mask"].all()
    assert item["point_valid"].all()
    depth = cameras.transform_points(
        item["world_to_camera"][0].double(), item["point_map"][0].double().reshape(3, -1).T
    )[:, 2]
    # depth is stored as float16 (relative step 2^-10, so within half of it)
    assert torch.allclose(depth, torch.full_like(depth, 525.0), rtol=2**-11, atol=0)


def test_pixelnerf_layout(tmp_path):
    scan = tmp_path / "rs_dtu_4" / "scan114"
    (scan / "image").mkdir(parents=True)
    rng = np.random.default_rng(3)
    K = np.array([[290.0, 0, 200.0], [0, 290.0, 150.0], [0, 0, 1]])
    scale_mat = np.diag([200.0, 200.0, 200.0, 1.0])
    scale_mat[:3, 3] = [10.0, -5.0, 600.0]
    arrays, expected = {}, {}
    for view in (22, 25, 28, 30):
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = _rotation(rng), rng.normal(0, 50, 3)
        arrays[f"world_mat_{view}"] = np.r_[K @ w2c[:3], [[0, 0, 0, 1]]]
        arrays[f"scale_mat_{view}"] = scale_mat
        expected[view] = w2c @ scale_mat  # cameras of the normalised world, up to scale
        _image(scan / "image" / f"{view:06d}.png", size=(400, 300), value=view)
    np.savez(scan / "cameras.npz", **arrays)
    data = DTUSource(tmp_path / "rs_dtu_4", split="all").load_scene("scan114")
    assert [f.name for f in data.frames] == ["22", "25", "28", "30"]
    assert data.metres_per_unit == pytest.approx(0.2)  # a normalised unit is 200 mm
    for frame in data.frames:
        assert np.allclose(frame.intrinsics, K)
        target = expected[int(frame.name)]
        s = np.cbrt(np.linalg.det(target[:3, :3]))
        assert np.allclose(frame.world_to_camera[:3], target[:3] / s)


def test_pfm_reader_orientation(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4)
    _write_pfm(tmp_path / "d.pfm", depth)
    assert np.array_equal(read_pfm(tmp_path / "d.pfm"), depth)


def test_eval_index_names_views(tmp_path):
    source = DTUSource(tmp_path)
    meta = {"frames": [str(v) for v in range(49)]}
    views = source.eval_views("scan8", meta, np.random.default_rng(0))
    assert views["context"] == [25, 22, 28] and len(views["target"]) == 25
    assert json.dumps(views)
    meta = {"frames": [str(v) for v in range(49) if v != 22]}
    assert source.eval_views("scan8", meta, np.random.default_rng(0)) == (
        "input view(s) [22] missing"
    )


def test_mvsnet_shared_cameras_and_rectified_images(tmp_path):
    root = tmp_path / "mvs_training"
    (root / "Cameras").mkdir(parents=True)
    (root / "Rectified" / "scan3_train").mkdir(parents=True)
    (root / "Depths" / "scan3_train").mkdir(parents=True)
    for view in (0, 1, 2):
        (root / "Cameras" / f"{view:08d}_cam.txt").write_text(SAMPLE.read_text())
        for light in (0, 3):  # lighting 3 is preferred
            _image(
                root / "Rectified" / "scan3_train" / f"rect_{view + 1:03d}_{light}_r5000.png",
                value=10 * view + light,
            )
        _write_pfm(
            root / "Depths" / "scan3_train" / f"depth_map_{view:04d}.pfm", np.full((30, 40), 700.0)
        )
    assert DTUSource(root, split="test").list_scenes()[0] == []
    data = DTUSource(root, split="train", geometry="depth").load_scene("scan3")
    assert [f.name for f in data.frames] == ["0", "1", "2"]
    expected = np.asarray(Image.open(root / "Rectified" / "scan3_train" / "rect_002_3_r5000.png"))
    assert np.array_equal(data.frames[1].image, expected)
    assert data.frames[0].depth.shape == (120, 160) and (data.frames[0].depth == 700).all()
    _, K, _ = parse_cam_file(SAMPLE)
    assert np.allclose(data.frames[0].intrinsics, K * [[0.1], [0.1], [1]])


def test_short_side_downscales_images_cameras_depth_and_masks(tmp_path):
    scan = tmp_path / "dtu" / "scan21"
    for sub in ("cams", "images", "depths", "mask"):
        (scan / sub).mkdir(parents=True)
    for view in (22, 25, 28):
        (scan / "cams" / f"{view:08d}_cam.txt").write_text(SAMPLE.read_text())
        _image(scan / "images" / f"{view:08d}.png", value=view)
        mask = np.zeros((120, 160), np.uint8)
        mask[:, :80] = 255
        Image.fromarray(mask).save(scan / "mask" / f"{view:03d}.png")
        _write_pfm(scan / "depths" / f"{view:08d}.pfm", np.full((120, 160), 600.0))
    out = tmp_path / "out"
    source = DTUSource(tmp_path / "dtu", geometry="depth")
    prepare_dataset(source, out, short_side=60, console=QUIET)
    ds = MultiViewDataset(out, num_views=3)
    item = ds.get_views("scan21", [0, 1, 2], num_refs=3)
    assert item["images"].shape == (3, 3, 60, 80)
    _, K, _ = parse_cam_file(SAMPLE)
    assert np.allclose(item["intrinsics"][0].numpy(), K * [[0.05], [0.05], [1]], rtol=1e-6)
    assert item["object_mask"][:, :, :40].all() and not item["object_mask"][:, :, 40:].any()
    points = item["point_map"].double().permute(0, 2, 3, 1).reshape(3, -1, 3)
    pixels, depth = cameras.project_points(
        points, item["intrinsics"].double(), item["world_to_camera"].double()
    )
    centres = cameras.pixel_centers(60, 80, dtype=torch.float64)[..., :2].reshape(-1, 2)
    assert torch.allclose(pixels, centres.expand_as(pixels), atol=1e-3)
    assert torch.allclose(depth, torch.full_like(depth, 600.0), rtol=1e-5)


# Cameras/train/00000000_cam.txt as MVSNet ships it for the sample camera: the 1600x1200
# intrinsics halved, centre-cropped by 80 and 44 px (to 640x512), then quartered (160x128)
TRAIN_INTRINSICS = "361.54125 0.0 82.900625\n0.0 360.3975 66.383875\n0.0 0.0 1.0"


def _train_cam_text() -> str:
    text = SAMPLE.read_text()
    start, end = text.index("intrinsic") + len("intrinsic"), text.index("425")
    return text[:start] + "\n" + TRAIN_INTRINSICS + "\n\n" + text[end:]


def test_mvsnet_training_layout_uses_cameras_train(tmp_path):
    """Rectified/scanN_train (640x512) takes Cameras/train: fx 2892.33 / 8 x 4 = 1446.2 and
    fy 2883.18 / 2 = 1441.6 (not 1157 and 1230 from stretching the 1600x1200 camera)."""
    root = tmp_path / "mvs_training"
    (root / "Cameras" / "train").mkdir(parents=True)
    (root / "Rectified" / "scan8_train").mkdir(parents=True)
    for view in (22, 25, 28):
        (root / "Cameras" / f"{view:08d}_cam.txt").write_text(SAMPLE.read_text())
        (root / "Cameras" / "train" / f"{view:08d}_cam.txt").write_text(_train_cam_text())
        Image.new("RGB", (640, 512), (view, 0, 0)).save(
            root / "Rectified" / "scan8_train" / f"rect_{view + 1:03d}_3_r5000.png"
        )
    data = DTUSource(root, split="test").load_scene("scan8")
    K = data.frames[0].intrinsics
    assert K[0, 0] == pytest.approx(1446.165) and K[1, 1] == pytest.approx(1441.59)
    # the principal point of the crop: (823.205 / 2 - 80, 619.071 / 2 - 44)
    assert K[0, 2] == pytest.approx(331.6025) and K[1, 2] == pytest.approx(265.5355)
    w2c, _, _ = parse_cam_file(SAMPLE)
    assert np.array_equal(data.frames[0].world_to_camera, w2c)

    # without Cameras/train the 1600x1200 camera is not stretched onto the 640x512 crop
    for path in (root / "Cameras" / "train").iterdir():
        path.unlink()
    data = DTUSource(root, split="test").load_scene("scan8")
    assert data.frames == []
    assert {s.reason for s in data.skipped} == {"intrinsics do not fit a 640x512 image"}


def test_original_size_cameras_are_used_as_they_are(tmp_path):
    root = tmp_path / "dtu"
    (root / "Cameras" / "train").mkdir(parents=True)
    (root / "Rectified" / "scan8").mkdir(parents=True)
    (root / "Cameras" / "00000025_cam.txt").write_text(SAMPLE.read_text())
    (root / "Cameras" / "train" / "00000025_cam.txt").write_text(_train_cam_text())
    Image.new("RGB", (1600, 1200)).save(root / "Rectified" / "scan8" / "rect_026_3_r5000.png")
    frame = DTUSource(root, split="test").load_scene("scan8").frames[0]
    assert frame.intrinsics[0, 0] == pytest.approx(2892.33)
    assert frame.intrinsics[1, 1] == pytest.approx(2883.18)


def test_masks_covering_only_targets_keep_the_inputs(tmp_path):
    """RegNeRF's idrmasks of a non-IDR scan hold the test views only: the inputs stay (with a
    full mask, never scored); a target without a mask is dropped, not the scan."""
    root = tmp_path / "dtu"
    scan = root / "scan8"
    (scan / "cams").mkdir(parents=True)
    (scan / "images").mkdir()
    masks = root / "idrmasks" / "scan8" / "mask"
    masks.mkdir(parents=True)
    for view in (22, 25, 28, 1, 2, 9):
        (scan / "cams" / f"{view:08d}_cam.txt").write_text(SAMPLE.read_text())
        _image(scan / "images" / f"{view:08d}.png", value=view)
    for view in (1, 2):
        mask = np.zeros((120, 160), np.uint8)
        mask[:60] = 255
        Image.fromarray(mask).save(masks / f"{view:03d}.png")
    out = tmp_path / "out"
    report = prepare_dataset(DTUSource(root), out, console=QUIET)
    assert report.scenes == 1
    assert {s.item for s in report.skipped if s.item.startswith("scan8/")} == {"scan8/9"}
    ds = MultiViewDataset(out, num_views=3)
    views = load_eval_index(out)["scan8"]
    frames = ds.index["scenes"]["scan8"]["frames"]
    assert [frames[i] for i in views["context"]] == ["25", "22", "28"]
    assert [frames[i] for i in views["target"]] == ["1", "2"]
    item = ds.get_views("scan8", views["context"] + views["target"], num_refs=3)
    assert item["object_mask"][:3].all()
    assert item["object_mask"][3:, :60].all() and not item["object_mask"][3:, 60:].any()
    # protocols scoring full images read no masks at all
    data = DTUSource(root, protocol="pixelnerf").load_scene("scan8")
    assert len(data.frames) == 6 and all(f.mask is None for f in data.frames)


# the published lists: RegNeRF internal/datasets.py (test_idx), pixelNeRF (all views but the
# inputs and its ban_views), MVSplat assets/evaluation_index_dtu_nctx2.json
REGNERF_TARGETS = [1, 2, 9, 10, 11, 12, 14, 15, 23, 24, 26, 27, 29, 30, 31, 32, 33, 34, 35]
REGNERF_TARGETS += [41, 42, 43, 45, 46, 47]
PIXELNERF_TARGETS = [0, 1, 2, 8, 9, 10, 11, 12, 13, 14, 15, 23, 24, 26, 27, 29, 30, 31, 32]
PIXELNERF_TARGETS += [33, 34, 35, 40, 41, 42, 43, 44, 45, 46, 47, 48]
TEST_SCAN_NUMBERS = [8, 21, 30, 31, 34, 38, 40, 41, 45, 55, 63, 82, 103, 110, 114]


@pytest.mark.parametrize(
    ("protocol", "scans", "context", "target"),
    [
        ("regnerf", TEST_SCAN_NUMBERS, [25, 22, 28], REGNERF_TARGETS),
        ("pixelnerf", TEST_SCAN_NUMBERS, [25, 22, 28], PIXELNERF_TARGETS),
        ("mvsplat", [1, *TEST_SCAN_NUMBERS], [33, 31], [32, 24, 23, 44]),
    ],
)
def test_protocols_give_their_published_views(tmp_path, protocol, scans, context, target):
    assert len(REGNERF_TARGETS) == 25 and len(PIXELNERF_TARGETS) == 31
    for number in (1, 2, *TEST_SCAN_NUMBERS):
        (tmp_path / f"scan{number}").mkdir()
    source = DTUSource(tmp_path, split="test", protocol=protocol)
    assert source.list_scenes() == ([f"scan{n}" for n in scans], [])
    shuffled = [str(v) for v in np.random.default_rng(0).permutation(49)]
    views = source.eval_views("scan8", {"frames": shuffled}, np.random.default_rng(0))
    assert [int(shuffled[i]) for i in views["context"]] == context
    assert [int(shuffled[i]) for i in views["target"]] == target


def test_prepare_cli_records_the_protocol(tmp_path):
    from click.testing import CliRunner

    from cameo_cli.cli import main

    root = tmp_path / "dtu"
    scan = root / "scan1"
    (scan / "cams").mkdir(parents=True)
    (scan / "images").mkdir()
    for view in (31, 33, 32, 24):
        (scan / "cams" / f"{view:08d}_cam.txt").write_text(SAMPLE.read_text())
        _image(scan / "images" / f"{view:08d}.png", value=view)
    out = tmp_path / "out"
    args = ["prepare", "dtu", "--root", str(root), "--out", str(out), "--protocol", "mvsplat"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (
        json.loads((out / "index.json").read_text())["source"]["options"]["protocol"] == "mvsplat"
    )
    frames = json.loads((out / "index.json").read_text())["scenes"]["scan1"]["frames"]
    views = load_eval_index(out)["scan1"]
    assert [frames[i] for i in views["context"]] == ["33", "31"]
    assert [frames[i] for i in views["target"]] == ["32", "24"]
    args = ["prepare", "synthetic", "--out", str(tmp_path / "s"), "--protocol", "mvsplat"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--protocol does not apply to synthetic" in result.output
