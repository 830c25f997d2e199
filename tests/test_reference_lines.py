"""Reference lines (flat, copy, reproject) against hand computations on a plane z = 2 seen by
cameras that move along x: f = 4 px, principal point (4, 4), 8 x 8 images, so a camera shift
of 1 moves the plane's image by f * 1 / z = 2 pixels."""

from __future__ import annotations

import math

import pytest
import torch

from cameo_cli import cameras
from cameo_cli.image_metrics import psnr
from cameo_cli.reference_lines import reference_lines

SIZE, FOCAL, DEPTH = 8, 4.0, 2.0
K = torch.tensor([[FOCAL, 0.0, SIZE / 2], [0.0, FOCAL, SIZE / 2], [0.0, 0.0, 1.0]])


def camera_at(x: float) -> torch.Tensor:
    """World-to-camera of a camera at (x, 0, 0) looking down +z (no rotation)."""
    w2c = torch.eye(4)
    w2c[0, 3] = -x
    return w2c


def plane_points(x: float, depth: float = DEPTH) -> torch.Tensor:
    """World points [3, H, W] of the plane z = depth through the pixel centres of the camera
    at (x, 0, 0), by hand: X = (u - cx) z / f + x, Y = (v - cy) z / f."""
    centres = torch.arange(SIZE) + 0.5
    u = (centres - SIZE / 2)[None, :].expand(SIZE, SIZE)
    v = (centres - SIZE / 2)[:, None].expand(SIZE, SIZE)
    return torch.stack([u * depth / FOCAL + x, v * depth / FOCAL, torch.full_like(u, depth)])


def random_images(count: int) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(count))


def sample(xs: list[float], ref_mask: list[bool], points: list[torch.Tensor] | None = None):
    """One sample's views at camera positions `xs` with random images."""
    images = random_images(len(xs))
    w2c = torch.stack([camera_at(x) for x in xs])
    point_map = torch.stack(points if points is not None else [plane_points(x) for x in xs])
    valid = torch.ones(len(xs), SIZE, SIZE, dtype=torch.bool)
    return images, K.expand(len(xs), 3, 3), w2c, torch.tensor(ref_mask), point_map, valid


def test_a_target_equal_to_a_reference_is_copied_and_reprojected_exactly() -> None:
    # a general camera (rotated and moved), the target the same view as the reference
    pose = cameras.pose_from_quaternion(
        torch.tensor([0.9, 0.1, -0.3, 0.2]) / torch.tensor([0.9, 0.1, -0.3, 0.2]).norm(),
        torch.tensor([0.3, -0.2, 0.5]),
    )
    depth = 1.0 + torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    points = cameras.unproject_depth(depth.double(), K.double(), pose.double()).float()
    image = random_images(1)[0]
    lines = reference_lines(
        torch.stack([image, image]),
        K.expand(2, 3, 3),
        torch.stack([pose, pose]),
        torch.tensor([True, False]),
        torch.stack([points, points]),
        torch.ones(2, SIZE, SIZE, dtype=torch.bool),
    )
    assert torch.equal(lines.copy[0], image)
    assert psnr(lines.copy, image[None]).item() == 100.0  # the cap of identical images
    assert lines.seen.item() == 1.0
    assert torch.equal(lines.reproject[0], image)


def test_an_identity_camera_reprojects_to_the_reference_itself() -> None:
    images, k, w2c, ref_mask, points, valid = sample([0.0, 0.0], [True, False])
    assert torch.equal(w2c[1], torch.eye(4))
    lines = reference_lines(images, k, w2c, ref_mask, points, valid)
    assert torch.equal(lines.reproject[0], images[0])  # not the target's own image
    assert lines.seen.item() == 1.0


def test_a_shifted_camera_takes_pixels_two_columns_over_and_the_mean_where_unseen() -> None:
    images, k, w2c, ref_mask, points, valid = sample([0.0, 1.0], [True, False])
    lines = reference_lines(images, k, w2c, ref_mask, points, valid)
    reference, mean = images[0], images[0].mean(dim=(1, 2))
    # target pixel (r, c) is the reference's (r, c + 2); columns 6 and 7 leave its image
    assert torch.equal(lines.reproject[0, :, :, :6], reference[:, :, 2:])
    assert torch.allclose(lines.reproject[0, :, :, 6:], mean[:, None, None].expand(3, SIZE, 2))
    assert lines.seen.item() == 6 / 8
    assert torch.equal(lines.copy[0], reference)


def test_an_occluded_or_disagreeing_depth_is_not_seen() -> None:
    reference_points = plane_points(0.0)
    reference_points[:, 0] *= 0.5  # row 0: an occluder at half the depth
    reference_points[:, 1] *= 1.025  # row 1: 2.5 % further, within the 3 % tolerance
    reference_points[:, 2] *= 1.05  # row 2: 5 % further: another surface
    images, k, w2c, ref_mask, points, valid = sample(
        [0.0, 0.0], [True, False], [reference_points, plane_points(0.0)]
    )
    valid[1, 3, 4] = False  # a target pixel without depth
    lines = reference_lines(images, k, w2c, ref_mask, points, valid)
    mean = images[0].mean(dim=(1, 2))
    for row in (0, 2):
        assert torch.allclose(lines.reproject[0, :, row], mean[:, None].expand(3, SIZE))
    assert torch.allclose(lines.reproject[0, :, 3, 4], mean)
    assert torch.equal(lines.reproject[0, :, 1], images[0, :, 1])
    assert torch.equal(lines.reproject[0, :, 4:], images[0, :, 4:])
    assert lines.seen.item() == pytest.approx((64 - 2 * 8 - 1) / 64)


def test_each_pixel_comes_from_the_nearest_reference_that_sees_it() -> None:
    # references at x = 0 (distance 1) and x = 1.5 (distance 0.5) around a target at x = 1;
    # the target in the middle of the views: any order of references and targets
    images, k, w2c, ref_mask, points, valid = sample([0.0, 1.0, 1.5], [True, False, True])
    lines = reference_lines(images, k, w2c, ref_mask, points, valid)
    far, near = images[0], images[2]
    assert torch.equal(lines.copy[0], near)
    # in the near one, target column c is column c - 1 (f * (1 - 1.5) / z = -1): column 0
    # falls outside and comes from the far one, column 0 + 2
    assert torch.equal(lines.reproject[0, :, :, 1:], near[:, :, :-1])
    assert torch.equal(lines.reproject[0, :, :, 0], far[:, :, 2])
    assert lines.seen.item() == 1.0


def test_the_flat_line_is_the_references_mean_colour() -> None:
    references = torch.zeros(2, 3, SIZE, SIZE)
    references[0, 0] = 1.0  # red
    references[1, 1, :4] = 1.0  # green on the top half, blue below
    references[1, 2, 4:] = 1.0
    images = torch.cat([references, random_images(2)])
    lines = reference_lines(
        images,
        K.expand(4, 3, 3),
        torch.stack([camera_at(x) for x in (0.0, 3.0, 1.0, 2.9)]),
        torch.tensor([True, True, False, False]),
    )
    colour = torch.tensor([0.5, 0.25, 0.25])
    assert torch.equal(lines.flat, colour[None, :, None, None].expand(2, 3, SIZE, SIZE))
    truth = (colour + torch.tensor([0.1, -0.1, 0.1]))[None, :, None, None].expand(1, 3, SIZE, SIZE)
    assert psnr(lines.flat[:1], truth).item() == pytest.approx(20.0)  # MSE 0.01
    assert torch.equal(lines.copy[0], references[0]) and torch.equal(lines.copy[1], references[1])
    assert lines.reproject is None and lines.seen is None  # no point maps
    assert sorted(lines.images()) == ["copy", "flat"]


def test_validation_averages_the_lines_over_the_batchs_target_views() -> None:
    from cameo_cli.batch import ViewBatch
    from cameo_cli.train.validation import reference_line_psnr

    items = []
    for shift in (0.0, 1.0):  # the target is the reference's view, then one moved by 1
        images, k, w2c, ref_mask, points, valid = sample([0.0, shift], [True, False])
        colour = torch.tensor([0.2, 0.4, 0.6])[:, None, None]
        images[0] = colour + 0.1 if shift else images[0]  # a flat reference, 0.1 off
        images[1] = colour if shift else images[0]
        items.append(
            {"images": images * 2 - 1, "intrinsics": k, "world_to_camera": w2c,
             "ref_mask": ref_mask, "scene": "plane", "frames": torch.arange(2),
             "point_map": points, "point_valid": valid}
        )  # fmt: skip
    batch = ViewBatch.collate(items)
    lines = reference_line_psnr(batch)
    first = (items[0]["images"][0] + 1) / 2
    flat = -10 * math.log10(((first - first.mean(dim=(1, 2), keepdim=True)) ** 2).mean().item())
    # first target: copied and reprojected exactly (the cap, 100 dB); second: 0.1 off: 20 dB
    assert lines["val/line_copy_psnr"] == pytest.approx((100 + 20) / 2, abs=1e-4)
    assert lines["val/line_reproject_psnr"] == pytest.approx((100 + 20) / 2, abs=1e-4)
    assert lines["val/line_flat_psnr"] == pytest.approx((flat + 20) / 2, abs=1e-4)
    assert lines["val/line_reproject_seen"] == pytest.approx((1 + 6 / 8) / 2)
