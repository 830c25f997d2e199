"""Camera conventions: every conversion both ways, analytic values, and the real files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cameo_cli import cameras

DATA = Path("/work/shared/data")
RE10K_CLIP = DATA / "re10k-sample" / "0bf152ef84195293.txt"
DTU_CAM = DATA / "dtu-cam-sample.txt"

f64 = torch.float64


def rotation_about(axis: str, degrees: float) -> torch.Tensor:
    """An analytic rotation matrix (float64) about x, y or z."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    matrices = {
        "x": [[1, 0, 0], [0, c, -s], [0, s, c]],
        "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }
    return torch.tensor(matrices[axis], dtype=f64)


def make_w2c(rotation: torch.Tensor, translation: list[float]) -> torch.Tensor:
    w2c = torch.eye(4, dtype=f64)
    w2c[:3, :3] = rotation
    w2c[:3, 3] = torch.tensor(translation, dtype=f64)
    return w2c


def random_w2c(batch: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(*batch, 3, 3, generator=generator, dtype=f64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    q = q * torch.sign(torch.linalg.det(q))[..., None, None]  # proper rotations
    w2c = torch.eye(4, dtype=f64).repeat(*batch, 1, 1)
    w2c[..., :3, :3] = q
    w2c[..., :3, 3] = torch.randn(*batch, 3, generator=generator, dtype=f64)
    return w2c


def read_re10k_inline(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimal parse of a RealEstate10K pose file: (normalised intrinsics [N,4], w2c [N,3,4])."""
    rows = [line.split() for line in path.read_text().splitlines()[1:] if line.strip()]
    values = torch.tensor([[float(x) for x in row] for row in rows], dtype=f64)
    return values[:, 1:5], values[:, 7:19].reshape(-1, 3, 4)


def read_dtu_inline(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimal parse of an MVSNet *_cam.txt: (extrinsic w2c [4,4], intrinsic K [3,3])."""
    lines = [line.split() for line in path.read_text().splitlines()]
    start_e = next(i for i, line in enumerate(lines) if line == ["extrinsic"]) + 1
    start_k = next(i for i, line in enumerate(lines) if line == ["intrinsic"]) + 1
    extrinsic = torch.tensor([[float(x) for x in row] for row in lines[start_e : start_e + 4]])
    intrinsic = torch.tensor([[float(x) for x in row] for row in lines[start_k : start_k + 3]])
    return extrinsic.to(f64), intrinsic.to(f64)


# -- axes and poses -----------------------------------------------------------------------------


def test_opencv_opengl_axes_analytic_and_round_trip() -> None:
    w2c = make_w2c(rotation_about("y", 30.0), [0.1, -0.2, 2.0])
    point = torch.tensor([[0.3, 0.4, 1.5]], dtype=f64)
    in_cv = cameras.transform_points(w2c, point)
    in_gl = cameras.transform_points(cameras.w2c_opencv_to_opengl(w2c), point)
    # same x, y and z negated: OpenGL looks down -z with y up
    torch.testing.assert_close(in_gl, in_cv * torch.tensor([1.0, -1.0, -1.0], dtype=f64))
    torch.testing.assert_close(cameras.w2c_opengl_to_opencv(cameras.w2c_opencv_to_opengl(w2c)), w2c)
    c2w = cameras.w2c_to_c2w(w2c)
    c2w_gl = cameras.c2w_opencv_to_opengl(c2w)
    torch.testing.assert_close(c2w_gl, torch.linalg.inv(cameras.w2c_opencv_to_opengl(w2c)))
    torch.testing.assert_close(cameras.c2w_opengl_to_opencv(c2w_gl), c2w)
    # an OpenGL camera's viewing direction (-z) is OpenCV's +z: same world direction
    torch.testing.assert_close(-c2w_gl[:3, 2], c2w[:3, 2])


def test_w2c_c2w_round_trip_and_against_inverse() -> None:
    w2c = random_w2c((2, 5))
    c2w = cameras.w2c_to_c2w(w2c)
    torch.testing.assert_close(c2w, torch.linalg.inv(w2c))
    torch.testing.assert_close(cameras.c2w_to_w2c(c2w), w2c)
    torch.testing.assert_close(cameras.camera_centers(w2c), c2w[..., :3, 3])


def test_camera_center_analytic() -> None:
    # camera at (1, 2, 3) looking down world +z with no rotation: t = -C
    w2c = make_w2c(torch.eye(3, dtype=f64), [-1.0, -2.0, -3.0])
    torch.testing.assert_close(
        cameras.camera_centers(w2c), torch.tensor([1.0, 2.0, 3.0], dtype=f64)
    )


def test_pose_from_3x4_accepts_rows_and_flat() -> None:
    w2c = random_w2c((3,))
    torch.testing.assert_close(cameras.pose_from_3x4(w2c[:, :3]), w2c)
    torch.testing.assert_close(cameras.pose_from_3x4(w2c[:, :3].reshape(3, 12)), w2c)


@pytest.mark.parametrize("degrees", [0.0, 1e-4, 10.0, 90.0, 179.0, 180.0])
def test_relative_rotation_angle_analytic(degrees: float) -> None:
    a = make_w2c(rotation_about("x", 20.0), [0.0, 0.0, 0.0])
    b = make_w2c(rotation_about("z", degrees) @ rotation_about("x", 20.0), [1.0, 2.0, 3.0])
    angle = cameras.relative_rotation_angle(a, b)
    assert angle.dtype == f64
    assert abs(angle.item() - degrees) < 1e-9
    assert abs(cameras.relative_rotation_angle(b, a).item() - degrees) < 1e-9


# -- intrinsics -----------------------------------------------------------------------------------


def test_normalized_pixel_intrinsics_both_ways() -> None:
    K_norm = cameras.intrinsics_matrix(
        *(torch.tensor(v, dtype=f64) for v in (0.474812461, 0.844111024, 0.5, 0.5))
    )
    K = cameras.normalized_to_pixel_intrinsics(K_norm, height=360, width=640)
    expected = torch.tensor(
        [[0.474812461 * 640, 0, 320], [0, 0.844111024 * 360, 180], [0, 0, 1]], dtype=f64
    )
    torch.testing.assert_close(K, expected)
    torch.testing.assert_close(cameras.pixel_to_normalized_intrinsics(K, 360, 640), K_norm)


def test_resize_and_crop_intrinsics_follow_pixels() -> None:
    K = torch.tensor([[500.0, 0, 320], [0, 400.0, 180], [0, 0, 1]], dtype=f64)
    point = torch.tensor([[0.2, -0.1, 2.0]], dtype=f64)
    w2c = torch.eye(4, dtype=f64)
    uv, _ = cameras.project_points(point, K, w2c)
    resized = cameras.resize_intrinsics(K, (360, 640), (180, 320))
    torch.testing.assert_close(cameras.project_points(point, resized, w2c)[0], uv / 2)
    torch.testing.assert_close(cameras.resize_intrinsics(resized, (180, 320), (360, 640)), K)
    cropped = cameras.crop_intrinsics(K, top=10, left=40)
    torch.testing.assert_close(
        cameras.project_points(point, cropped, w2c)[0],
        uv - torch.tensor([40.0, 10.0], dtype=f64),
    )
    torch.testing.assert_close(cameras.crop_intrinsics(cropped, top=-10, left=-40), K)


def test_resize_center_crop_matches_torch_resize_of_a_dot() -> None:
    """A bright pixel moves where the new K says, after a real resize + centre crop."""
    height, width, target = 48, 80, 24
    K = torch.tensor([[60.0, 0, 40.0], [0, 60.0, 24.0], [0, 0, 1]], dtype=f64)
    box = cameras.resize_center_crop_box((height, width), target)
    assert box == (24, 40, 0, 8)
    image = torch.zeros(1, 1, height, width, dtype=f64)
    image[..., 30:32, 50:52] = 1.0  # a 2x2 block centred on continuous point (51, 31)
    resized = torch.nn.functional.interpolate(image, size=box[:2], mode="area")
    crop = resized[..., box[2] : box[2] + target, box[3] : box[3] + target]
    rows, cols = torch.nonzero(crop[0, 0] > 0, as_tuple=True)
    centre = torch.tensor([cols.double().mean() + 0.5, rows.double().mean() + 0.5], dtype=f64)
    new_K = cameras.resize_center_crop_intrinsics(K, (height, width), target)
    ray = torch.linalg.inv(K) @ torch.tensor([51.0, 31.0, 1.0], dtype=f64)
    projected = new_K @ ray
    torch.testing.assert_close(projected[:2] / projected[2], centre)


def test_fov_to_focal_analytic() -> None:
    assert cameras.fov_to_focal(90.0, 64) == pytest.approx(32.0)


# -- projection -----------------------------------------------------------------------------------


def test_project_unproject_round_trip_float64() -> None:
    w2c = random_w2c((2,), seed=3)
    K = torch.tensor([[30.0, 0, 16.0], [0, 28.0, 12.0], [0, 0, 1]], dtype=f64).expand(2, 3, 3)
    depth = 1.0 + torch.rand(2, 24, 32, dtype=f64)
    points = cameras.unproject_depth(depth, K, w2c)  # [2, 3, 24, 32]
    assert points.shape == (2, 3, 24, 32) and points.dtype == f64
    uv, z = cameras.project_points(points.flatten(2).transpose(1, 2), K, w2c)
    torch.testing.assert_close(z, depth.flatten(1))
    expected = cameras.pixel_centers(24, 32, dtype=f64)[..., :2].reshape(-1, 2)
    torch.testing.assert_close(uv, expected.expand(2, -1, -1))


def test_project_points_analytic() -> None:
    K = torch.tensor([[100.0, 0, 50.0], [0, 100.0, 40.0], [0, 0, 1]], dtype=f64)
    w2c = make_w2c(torch.eye(3, dtype=f64), [0.0, 0.0, 1.0])  # camera at z = -1
    uv, depth = cameras.project_points(torch.tensor([[0.5, -0.2, 1.0]], dtype=f64), K, w2c)
    torch.testing.assert_close(uv, torch.tensor([[75.0, 30.0]], dtype=f64))
    torch.testing.assert_close(depth, torch.tensor([2.0], dtype=f64))


def test_point_map_depth_analytic_and_inverts_unprojection() -> None:
    w2c = make_w2c(torch.eye(3, dtype=f64), [0.0, 0.0, 1.0])  # camera at z = -1
    points = torch.tensor([0.5, -0.2, 1.0], dtype=f64).view(3, 1, 1)
    assert cameras.point_map_depth(points, w2c).item() == pytest.approx(2.0)
    w2c = random_w2c((2,), seed=4)
    K = torch.tensor([[30.0, 0, 16.0], [0, 28.0, 12.0], [0, 0, 1]], dtype=f64).expand(2, 3, 3)
    depth = 1.0 + torch.rand(2, 24, 32, dtype=f64)
    points = cameras.unproject_depth(depth, K, w2c)
    torch.testing.assert_close(cameras.point_map_depth(points, w2c), depth)


# -- Plücker raymaps -----------------------------------------------------------------------------


def test_relative_poses_reference_identity_and_unit_scale() -> None:
    w2c = random_w2c((2, 4), seed=5)
    relative, scale = cameras.relative_poses(w2c, reference_view=2)
    torch.testing.assert_close(relative[:, 2], torch.eye(4, dtype=f64).expand(2, 4, 4))
    distances = torch.linalg.vector_norm(cameras.camera_centers(relative), dim=-1)
    torch.testing.assert_close(distances.amax(-1), torch.ones(2, dtype=f64))
    centres = cameras.camera_centers(w2c)
    torch.testing.assert_close(scale, (centres - centres[:, 2:3]).norm(dim=-1).amax(-1))
    # relative rotations are preserved
    torch.testing.assert_close(
        cameras.relative_rotation_angle(relative[:, 0], relative[:, 1]),
        cameras.relative_rotation_angle(w2c[:, 0], w2c[:, 1]),
    )


def test_relative_poses_guard_for_coincident_cameras() -> None:
    """Cameras that only rotate about one centre: no translation to normalise, no NaN."""
    centre = torch.tensor([1.0, 2.0, 3.0], dtype=f64)
    rotations = [rotation_about("y", 10.0), rotation_about("y", 40.0), rotation_about("x", -5.0)]
    w2c = torch.stack([make_w2c(r, (-r @ centre).tolist()) for r in rotations])
    relative, scale = cameras.relative_poses(w2c)
    assert scale.item() == 1.0
    torch.testing.assert_close(relative[:, :3, 3], torch.zeros(3, 3, dtype=f64), atol=1e-12, rtol=0)
    assert torch.isfinite(cameras.plucker_raymap(torch.eye(3, dtype=f64), w2c, 2, 2)).all()


def test_plucker_raymap_properties() -> None:
    batch, views, height, width = 2, 3, 6, 8
    w2c = random_w2c((batch, views), seed=7)
    K = torch.tensor([[40.0, 0, 32.0], [0, 40.0, 24.0], [0, 0, 1]], dtype=f64)
    K = K.expand(batch, views, 3, 3)
    raymap = cameras.plucker_raymap(K, w2c, height, width, reference_view=1, image_size=(48, 64))
    assert raymap.shape == (batch, views, 6, height, width) and raymap.dtype == f64
    directions, moments = raymap[:, :, :3], raymap[:, :, 3:]
    torch.testing.assert_close(
        directions.norm(dim=2), torch.ones(batch, views, height, width, dtype=f64)
    )
    torch.testing.assert_close(
        (directions * moments).sum(2), torch.zeros(batch, views, height, width, dtype=f64)
    )
    # the reference camera sits at the origin: its rays pass through it (zero moment) and its
    # directions are the plain camera rays K⁻¹(u, v, 1) normalised
    torch.testing.assert_close(moments[:, 1], torch.zeros_like(moments[:, 1]))
    rays = cameras.camera_rays(K[0, 0], height, width, image_size=(48, 64))
    rays = (rays / rays.norm(dim=-1, keepdim=True)).permute(2, 0, 1)
    torch.testing.assert_close(directions[:, 1], rays.expand(batch, -1, -1, -1))


def test_plucker_ray_hits_known_point() -> None:
    """A pixel's ray (in the relative, normalised frame) passes through the 3D point it sees."""
    w2c = torch.stack(
        [
            make_w2c(rotation_about("y", 15.0), [0.3, 0.1, 2.0]),
            make_w2c(rotation_about("y", -20.0) @ rotation_about("x", 5.0), [-0.4, 0.2, 2.5]),
        ]
    )
    K = torch.tensor([[32.0, 0, 16.0], [0, 32.0, 16.0], [0, 0, 1]], dtype=f64)
    height = width = 8
    image_size = (32, 32)
    point = torch.tensor([[0.1, -0.05, 0.3]], dtype=f64)
    # make the point sit exactly on the centre of grid cell (r=5, c=2) of view 1
    cell_centre = torch.tensor([(2 + 0.5) * 4, (5 + 0.5) * 4, 1.0], dtype=f64)
    camera_point = torch.linalg.inv(K) @ cell_centre * 2.7
    point = cameras.transform_points(cameras.w2c_to_c2w(w2c[1]), camera_point[None])
    raymap = cameras.plucker_raymap(K, w2c, height, width, image_size=image_size)
    direction, moment = raymap[1, :3, 5, 2], raymap[1, 3:, 5, 2]
    relative, scale = cameras.relative_poses(w2c)
    # the point in the relative, normalised world frame of view 0
    point_rel = cameras.transform_points(w2c[0], point)[0] / scale
    # a point X lies on the Plücker line (d, m) iff X x d = m
    torch.testing.assert_close(torch.linalg.cross(point_rel, direction, dim=-1), moment)
    assert (
        torch.linalg.cross(point_rel, raymap[1, :3, 5, 3], dim=-1).sub(raymap[1, 3:, 5, 3]).norm()
        > 1e-3
    )


def test_plucker_float32_and_shared_intrinsics() -> None:
    w2c = random_w2c((4,), seed=11).float()
    K = torch.tensor([[20.0, 0, 16.0], [0, 20.0, 16.0], [0, 0, 1]])
    raymap = cameras.plucker_raymap(K, w2c, 4, 4, image_size=(32, 32))
    assert raymap.shape == (4, 6, 4, 4) and raymap.dtype == torch.float32
    expected = cameras.plucker_raymap(
        K.double().expand(4, 3, 3), w2c.double(), 4, 4, image_size=(32, 32)
    )
    torch.testing.assert_close(raymap, expected.float(), atol=1e-5, rtol=1e-5)


# -- real files -----------------------------------------------------------------------------------


def test_re10k_clip_rotations_and_centres() -> None:
    intrinsics, poses = read_re10k_inline(RE10K_CLIP)
    assert poses.shape == (16, 3, 4)
    assert intrinsics[0, 0].item() == pytest.approx(0.474812461)
    w2c = cameras.pose_from_3x4(poses)
    rotations = w2c[:, :3, :3]
    identity = torch.eye(3, dtype=f64).expand(16, 3, 3)
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), identity, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        torch.linalg.det(rotations), torch.ones(16, dtype=f64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        cameras.camera_centers(w2c), torch.linalg.inv(w2c)[:, :3, 3], atol=1e-6, rtol=0
    )  # equal up to the file's 9-digit rounding of R
    # consecutive frames of a smooth video: small but non-zero rotations
    angles = cameras.relative_rotation_angle(w2c[1:], w2c[:-1])
    assert (angles > 0).all() and (angles < 10).all()
    # pixel intrinsics at 640 x 360 follow the normalised ones
    K = cameras.normalized_to_pixel_intrinsics(
        cameras.intrinsics_matrix(*intrinsics.unbind(-1)), height=360, width=640
    )
    assert K[0, 0, 0].item() == pytest.approx(0.474812461 * 640)
    assert K[0, 1, 2].item() == pytest.approx(180.0)


def test_dtu_camera_projects_like_its_3x4_product() -> None:
    w2c, K = read_dtu_inline(DTU_CAM)
    P = K @ w2c[:3, :]
    generator = torch.Generator().manual_seed(0)
    # points in front of the camera: around the scan's working distance (depth range 425 +)
    camera_points = torch.rand(20, 3, generator=generator, dtype=f64) * torch.tensor(
        [200.0, 200.0, 300.0], dtype=f64
    ) + torch.tensor([-100.0, -100.0, 450.0], dtype=f64)
    # the exact inverse: the file's R is orthonormal to ~6 digits only
    world = cameras.transform_points(torch.linalg.inv(w2c), camera_points)
    uv, depth = cameras.project_points(world, K, w2c)
    homogeneous = torch.cat([world, torch.ones(20, 1, dtype=f64)], dim=1) @ P.T
    torch.testing.assert_close(uv, homogeneous[:, :2] / homogeneous[:, 2:], atol=1e-9, rtol=0)
    torch.testing.assert_close(depth, camera_points[:, 2])
    # a point on the optical axis lands on the principal point (823.205, 619.071)
    on_axis = cameras.transform_points(
        torch.linalg.inv(w2c), torch.tensor([[0.0, 0.0, 500.0]], dtype=f64)
    )
    principal = torch.tensor([[823.205, 619.071]], dtype=f64)
    torch.testing.assert_close(cameras.project_points(on_axis, K, w2c)[0], principal)
    rotation = w2c[:3, :3]
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3, dtype=f64), atol=1e-5, rtol=0)


def test_results_unchanged_under_bf16_autocast() -> None:
    w2c = random_w2c((2, 3), seed=13).float()
    K = torch.tensor([[300.0, 0, 256.0], [0, 300.0, 256.0], [0, 0, 1]])
    points = torch.randn(2, 3, 50, 3) + torch.tensor([0.0, 0.0, 6.0])
    plain = cameras.plucker_raymap(K, w2c, 8, 8, image_size=(512, 512))
    uv, depth = cameras.project_points(points, K, w2c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = cameras.plucker_raymap(K, w2c, 8, 8, image_size=(512, 512))
        uv_under, depth_under = cameras.project_points(points, K, w2c)
    assert under.dtype == torch.float32 and uv_under.dtype == torch.float32
    assert torch.equal(plain, under) and torch.equal(uv, uv_under)
    assert torch.equal(depth, depth_under)


def test_quaternion_rotation_analytic_and_pose_order() -> None:
    """90° about z: (w, x, y, z) = (cos 45°, 0, 0, sin 45°) maps x to y; q and -q agree."""
    half = math.sqrt(0.5)
    q = torch.tensor([half, 0.0, 0.0, half], dtype=torch.float64)
    rotation = cameras.quaternion_to_rotation(q)
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(rotation, expected.double(), atol=1e-12)
    assert torch.allclose(cameras.quaternion_to_rotation(-q), rotation)
    angle = math.radians(30.0)  # 30° about x, against the textbook matrix
    q = torch.tensor([math.cos(angle / 2), math.sin(angle / 2), 0.0, 0.0], dtype=torch.float64)
    c, s = math.cos(angle), math.sin(angle)
    about_x = torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
    assert torch.allclose(cameras.quaternion_to_rotation(q), about_x, atol=1e-12)
    # translate(t) @ R(q): the point is rotated first, then moved
    t = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    pose = cameras.pose_from_quaternion(q, t)
    point = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    moved = cameras.transform_points(pose, point)
    assert torch.allclose(moved[0], about_x @ point[0] + t)
