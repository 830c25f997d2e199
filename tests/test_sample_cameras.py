"""Camera files (RealEstate10K, cameo JSON, nerfstudio) and target trajectories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cameo_cli import cameras
from cameo_cli.camera_files import (
    CameraSet,
    match_cameras,
    read_cameras,
    to_cameo_json,
    to_nerfstudio,
    to_re10k,
)
from cameo_cli.errors import CameoError
from cameo_cli.sample.trajectories import (
    interpolate,
    look_at_center,
    orbit,
    quaternion_to_rotation,
    rotation_to_quaternion,
    slerp,
)

RE10K_CLIP = Path("/work/shared/data/re10k-sample/0bf152ef84195293.txt")
f64 = torch.float64


def random_rotations(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(count, 3, 3, generator=generator, dtype=f64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    return q * torch.sign(torch.linalg.det(q))[..., None, None]


def rotation_z(degrees: float) -> torch.Tensor:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=f64)


def random_scene(count: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel K for 360x640 images and OpenCV w2c."""
    w2c = torch.eye(4, dtype=f64).repeat(count, 1, 1)
    w2c[:, :3, :3] = random_rotations(count, 0)
    w2c[:, :3, 3] = torch.randn(count, 3, generator=torch.Generator().manual_seed(1), dtype=f64)
    focal = 300 + 20 * torch.arange(count, dtype=f64)
    K = cameras.intrinsics_matrix(focal, focal * 1.01, torch.full_like(focal, 321.5), focal / 2)
    return K, w2c


def write(path: Path, content: str | dict) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_nerfstudio_camera_against_hand_computed_opencv_pose(tmp_path: Path) -> None:
    """An OpenGL camera at (0, 0, 5) with identity rotation looks down -z at the origin."""
    c2w = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 5], [0, 0, 0, 1]]
    transforms = {
        "fl_x": 100,
        "fl_y": 100,
        "cx": 32,
        "cy": 24,
        "w": 64,
        "h": 48,
        "frames": [{"file_path": "images/a.png", "transform_matrix": c2w}],
    }
    cams = read_cameras(write(tmp_path / "transforms.json", transforms))
    expected = torch.tensor([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 5], [0, 0, 0, 1]], dtype=f64)
    torch.testing.assert_close(cams.world_to_camera[0], expected)
    K = cams.pixel_intrinsics([(48, 64)])
    pixels, depth = cameras.project_points(
        torch.tensor([[0.0, 0, 0], [1.0, 1, 0]], dtype=f64), K[0], cams.world_to_camera[0]
    )
    # the origin at the principal point; world +y (OpenGL up) appears above it (smaller v)
    torch.testing.assert_close(pixels, torch.tensor([[32.0, 24], [52, 4]], dtype=f64))
    assert depth.tolist() == [5.0, 5.0]
    assert cams.names == ["images/a.png"] and cams.image_sizes == [(48, 64)]


def test_real_realestate10k_file() -> None:
    cams = read_cameras(RE10K_CLIP)
    rows = [line.split() for line in RE10K_CLIP.read_text().splitlines()[1:] if line.strip()]
    assert len(cams) == len(rows)
    first = torch.tensor([float(v) for v in rows[0]], dtype=f64)
    torch.testing.assert_close(cams.world_to_camera[0, :3].reshape(-1), first[7:])
    K = cams.normalized_intrinsics[0]
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == tuple(first[1:5].tolist())
    assert cams.image_sizes[0] is None and cams.names[0] == rows[0][0]


@pytest.mark.parametrize(
    "writer",
    ["re10k", "nerfstudio", "opencv-w2c", "opencv-c2w", "opengl-w2c", "opengl-c2w"],
)
def test_every_format_round_trips_the_same_scene(tmp_path: Path, writer: str) -> None:
    K, w2c = random_scene()
    scene = CameraSet.from_pixel(K, w2c, (360, 640))
    if writer == "re10k":
        path = write(tmp_path / "cams.txt", to_re10k(scene, "https://example.com/v"))
    elif writer == "nerfstudio":
        path = write(tmp_path / "transforms.json", to_nerfstudio(scene, image_size=(360, 640)))
    else:
        convention, pose = writer.split("-")
        key = {"w2c": "world_to_camera", "c2w": "camera_to_world"}[pose]
        content = to_cameo_json(scene, image_size=(360, 640), convention=convention, pose=key)
        path = write(tmp_path / "cams.json", content)
    back = read_cameras(path)
    torch.testing.assert_close(back.world_to_camera, w2c, atol=1e-9, rtol=0)
    torch.testing.assert_close(back.pixel_intrinsics([(360, 640)] * 5), K, atol=1e-9, rtol=0)


def test_cameo_json_normalised_and_shared_intrinsics(tmp_path: Path) -> None:
    """Normalised shared intrinsics + OpenGL c2w give the same cameras as the pixel form."""
    c2w_gl = cameras.c2w_opencv_to_opengl(cameras.w2c_to_c2w(random_scene(2)[1]))
    content = {
        "convention": "opengl",
        "intrinsics_type": "normalized",
        "intrinsics": {"fx": 0.5, "fy": 0.9, "cx": 0.5, "cy": 0.5},
        "cameras": [{"camera_to_world": c2w[:3].tolist()} for c2w in c2w_gl],
    }
    cams = read_cameras(write(tmp_path / "cams.json", content))
    torch.testing.assert_close(cams.world_to_camera, random_scene(2)[1], atol=1e-12, rtol=0)
    K = cams.pixel_intrinsics([(100, 200), (100, 200)])
    assert K[0].tolist() == [[100.0, 0, 100.0], [0, 90.0, 50.0], [0, 0, 1]]
    # square crop at 64 px: shorter side 100 -> 64, then the 128-wide image is cropped by 32
    K64, _ = cams.at_resolution([(100, 200)] * 2, 64)
    torch.testing.assert_close(
        K64[0], torch.tensor([[64.0, 0, 32.0], [0, 57.6, 32.0], [0, 0, 1]], dtype=f64)
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.txt", "url\n1 2 3\n", "19 numbers"),
        ("a.txt", "1 " + "x " * 18 + "\n", "not a number"),
        ("a.txt", "https://example.com/v\n", "no cameras"),
        ("a.json", "{not json", "not valid JSON"),
        ("a.json", {"poses": []}, "'cameras' list"),
        ("a.json", {"cameras": [{"intrinsics": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}]}, "exactly one"),
        (
            "a.json",
            {
                "cameras": [
                    {
                        "world_to_camera": torch.eye(4).tolist(),
                        "intrinsics": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                    }
                ]
            },
            "need the image 'width' and 'height'",
        ),
        (
            "a.json",
            {
                "width": 4,
                "height": 4,
                "intrinsics": [[1, 0], [0, 1]],
                "cameras": [{"world_to_camera": torch.eye(4).tolist()}],
            },
            "must be 3x3",
        ),
        (
            "a.json",
            {
                "width": 4,
                "height": 4,
                "intrinsics": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                "cameras": [{"world_to_camera": (2 * torch.eye(4)).tolist()}],
            },
            "not a rotation",
        ),
        (
            "a.json",
            {
                "fl_x": 1,
                "fl_y": 1,
                "cx": 1,
                "cy": 1,
                "w": 2,
                "h": 2,
                "k1": 0.1,
                "frames": [{"transform_matrix": torch.eye(4).tolist()}],
            },
            "lens distortion",
        ),
        ("a.json", {"frames": [{"transform_matrix": torch.eye(4).tolist()}]}, "'fl_x'"),
    ],
)
def test_malformed_files_name_the_problem(
    tmp_path: Path, name: str, content: str | dict, message: str
) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(CameoError, match=message) as error:
        read_cameras(path)
    assert str(path) in error.value.message


def test_missing_file_and_matching_by_name(tmp_path: Path) -> None:
    with pytest.raises(CameoError, match="not found"):
        read_cameras(tmp_path / "none.json")
    K, w2c = random_scene(3)
    scene = CameraSet.from_pixel(K, w2c, (360, 640), names=["x/a.png", "x/b.png", "x/c.png"])
    chosen = match_cameras(scene, [Path("c.png"), Path("a.png")], tmp_path)
    torch.testing.assert_close(chosen.world_to_camera, w2c[[2, 0]])
    assert match_cameras(scene, [Path(p) for p in "pqr"], tmp_path) is scene
    with pytest.raises(CameoError, match="3 cameras for 2 images"):
        match_cameras(scene, [Path("a.png"), Path("z.png")], tmp_path)


# -- trajectories ------------------------------------------------------------------------------


def test_quaternions_against_closed_form() -> None:
    q = rotation_to_quaternion(rotation_z(60.0))
    torch.testing.assert_close(
        q, torch.tensor([math.cos(math.pi / 6), 0, 0, math.sin(math.pi / 6)], dtype=f64)
    )
    rotations = torch.cat(
        [random_rotations(50, 2), rotation_z(180.0)[None], torch.eye(3, dtype=f64)[None]]
    )
    torch.testing.assert_close(
        quaternion_to_rotation(rotation_to_quaternion(rotations)), rotations, atol=1e-12, rtol=0
    )
    middle = slerp(rotation_to_quaternion(torch.eye(3, dtype=f64)), q, 0.5)
    torch.testing.assert_close(quaternion_to_rotation(middle), rotation_z(30.0))


def look_at(center: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """OpenCV w2c of a camera at `center` looking at `target`, world +z up."""
    forward = (target - center) / torch.linalg.vector_norm(target - center)
    right = torch.linalg.cross(forward, torch.tensor([0, 0, 1.0], dtype=f64))
    right = right / torch.linalg.vector_norm(right)
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=f64)
    c2w[:3, :3] = torch.stack([right, down, forward], -1)
    c2w[:3, 3] = center
    return cameras.c2w_to_w2c(c2w)


def ring(angles: list[float], radius: float = 3.0, height: float = 1.0) -> torch.Tensor:
    target = torch.tensor([0.5, -0.2, 0.3], dtype=f64)
    poses = []
    for angle in angles:
        a = math.radians(angle)
        center = target + torch.tensor(
            [radius * math.cos(a), radius * math.sin(a), height], dtype=f64
        )
        poses.append(look_at(center, target))
    return torch.stack(poses)


def test_look_at_center_and_orbit() -> None:
    w2c = ring([0.0, 40.0, 75.0])
    target = torch.tensor([0.5, -0.2, 0.3], dtype=f64)
    torch.testing.assert_close(look_at_center(w2c), target)
    K = torch.tensor([[50.0, 0, 32], [0, 50, 32], [0, 0, 1]], dtype=f64).repeat(3, 1, 1)
    orbit_K, orbit_w2c = orbit(K, w2c, 8)
    assert orbit_K.shape == (8, 3, 3) and orbit_w2c.shape == (8, 4, 4)
    torch.testing.assert_close(orbit_w2c[0], w2c[0])
    pixels, depth = cameras.project_points(target.expand(8, 1, 3), orbit_K, orbit_w2c)
    torch.testing.assert_close(pixels[:, 0], torch.full((8, 2), 32.0, dtype=f64))
    torch.testing.assert_close(depth[:, 0], depth[0, 0].expand(8))
    steps = cameras.relative_rotation_angle(orbit_w2c[:-1], orbit_w2c[1:])
    torch.testing.assert_close(steps, torch.full((7,), 45.0, dtype=f64))
    centers = cameras.camera_centers(orbit_w2c)
    assert torch.allclose(centers[:, 2], centers[0, 2])  # circles about the world up axis


def test_single_reference_orbits_a_point_in_front() -> None:
    w2c = ring([10.0])
    K = torch.eye(3, dtype=f64)[None]
    _, orbit_w2c = orbit(K, w2c, 4)
    center = look_at_center(w2c)
    assert cameras.project_points(center[None], K[0], w2c[0])[1][0] > 0
    torch.testing.assert_close(orbit_w2c[0], w2c[0])


def test_interpolate_between_references() -> None:
    w2c = ring([0.0, 60.0, 90.0])
    K = torch.tensor([[50.0, 0, 32], [0, 50, 32], [0, 0, 1]], dtype=f64).repeat(3, 1, 1)
    K[1, 0, 0] = 70.0
    out_K, out_w2c = interpolate(K, w2c, 3)  # positions 0.5, 1.0, 1.5 along 2 segments
    centers, ref_centers = cameras.camera_centers(out_w2c), cameras.camera_centers(w2c)
    torch.testing.assert_close(centers[0], (ref_centers[0] + ref_centers[1]) / 2)
    torch.testing.assert_close(out_w2c[1], w2c[1])
    half = cameras.relative_rotation_angle(w2c[0], out_w2c[0])
    torch.testing.assert_close(half, cameras.relative_rotation_angle(out_w2c[0], w2c[1]))
    assert out_K[0, 0, 0] == 60.0 and out_K[2, 0, 0] == 60.0
    with pytest.raises(CameoError, match="at least 2 reference"):
        interpolate(K[:1], w2c[:1], 3)
