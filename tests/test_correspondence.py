"""Correspondence targets and cycle mask, checked against an independent analytic renderer.

The scene (a back wall, a floor and a box) is ray-cast analytically here; the expected target
of a token is found by projecting its 3D point into the other view with `cameras.py` and a
depth test against that view's analytic depth, never with the code under test.
"""

from __future__ import annotations

import pytest
import torch

from cameo_cli import cameras
from cameo_cli.errors import CameoError
from cameo_cli.geometry import (
    correspondence_targets,
    point_map_from_depth,
    resize_point_map,
)
from cameo_cli.geometry.correspondence import GROUP, _first_argmin, nearest_key_tokens
from cameo_cli.geometry.vggt import VGGTDepth, weights_file
from tests.official_reference import official_joint_targets

f64 = torch.float64
IMAGE, GRID = 64, 16  # 64 px views, a 16 x 16 token grid: 4 x 4 pixels per token
SCALE = IMAGE // GRID
K = torch.tensor([[56.0, 0.0, 32.0], [0.0, 56.0, 32.0], [0.0, 0.0, 1.0]], dtype=f64)
WALL_Z, FLOOR_Y = 7.0, 1.2
BOX_MIN = torch.tensor([-0.45, -0.5, 2.0], dtype=f64)
BOX_MAX = torch.tensor([0.35, 0.6, 2.4], dtype=f64)


def look_at(centre: list[float], target: list[float]) -> torch.Tensor:
    """OpenCV world-to-camera (y down) looking from `centre` at `target`."""
    c, t = torch.tensor(centre, dtype=f64), torch.tensor(target, dtype=f64)
    forward = (t - c) / (t - c).norm()
    right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=f64), forward, dim=0)
    right = right / right.norm()
    down = torch.linalg.cross(forward, right, dim=0)
    rotation = torch.stack([right, down, forward])
    w2c = torch.eye(4, dtype=f64)
    w2c[:3, :3] = rotation
    w2c[:3, 3] = -rotation @ c
    return w2c


def cast(origin: torch.Tensor, directions: torch.Tensor, with_box: bool):
    """Analytic ray cast: (distance t along `directions` [..., 3], object id [...]).

    Objects: 0 wall (z = WALL_Z), 1 floor (y = FLOOR_Y), 2 box. No hit -> t = inf, id -1.
    """
    inf = torch.full(directions.shape[:-1], float("inf"), dtype=f64)
    t_wall = (WALL_Z - origin[2]) / directions[..., 2]
    t_floor = (FLOOR_Y - origin[1]) / directions[..., 1]
    hits = [torch.where(t > 0, t, inf) for t in (t_wall, t_floor)]
    if with_box:
        t1 = (BOX_MIN - origin) / directions
        t2 = (BOX_MAX - origin) / directions
        near = torch.minimum(t1, t2).amax(-1)
        far = torch.maximum(t1, t2).amin(-1)
        hits.append(torch.where((near <= far) & (near > 0), near, inf))
    stacked = torch.stack(hits, dim=-1)
    t, object_id = stacked.min(dim=-1)
    return t, torch.where(torch.isfinite(t), object_id, torch.full_like(object_id, -1))


def render(w2c: torch.Tensor, pixels: torch.Tensor, with_box: bool):
    """Points [..., 3], z-depth [...] and object ids of the rays through `pixels` [..., 2]."""
    homogeneous = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)
    camera_rays = homogeneous @ torch.linalg.inv(K).T  # z = 1 in the camera frame
    c2w = cameras.w2c_to_c2w(w2c)
    directions = camera_rays @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    t, object_id = cast(origin, directions, with_box)
    return origin + t[..., None] * directions, t, object_id  # t = z-depth since ray z = 1


def pixel_grid(size: int, cell: float) -> torch.Tensor:
    """(u, v) centres [size, size, 2] of a size x size grid of `cell`-pixel cells."""
    centres = (torch.arange(size, dtype=f64) + 0.5) * cell
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([u, v], dim=-1)


def make_views(with_box: bool) -> dict:
    w2c = torch.stack(
        [look_at([-0.7, -0.2, 0.0], [0.0, 0.2, 4.5]), look_at([0.8, -0.3, 0.3], [0.0, 0.2, 4.5])]
    )
    points, depth, ids = zip(
        *(render(w2c[v], pixel_grid(IMAGE, 1.0), with_box) for v in range(2)), strict=True
    )
    return {
        "w2c": w2c,
        "points": torch.stack(points).permute(0, 3, 1, 2),  # [2, 3, H, W]
        "depth": torch.stack(depth),
        "ids": torch.stack(ids),
        "with_box": with_box,
    }


def clean_tokens(ids: torch.Tensor) -> torch.Tensor:
    """[GRID, GRID] bool: the token's whole pixel footprint shows one object."""
    blocks = ids.reshape(GRID, SCALE, GRID, SCALE).permute(0, 2, 1, 3).reshape(GRID, GRID, -1)
    return (blocks == blocks[..., :1]).all(-1) & (blocks[..., 0] >= 0)


def visibility(views: dict, i: int, j: int, points: torch.Tensor):
    """For world points [..., 3] seen by view i: (pixel in view j [..., 2], in frame of j,
    visible from j, hidden from j by a nearer surface); an analytic depth test."""
    uv, z = cameras.project_points(points.reshape(-1, 3), K, views["w2c"][j])
    uv, z = uv.reshape(*points.shape[:-1], 2), z.reshape(points.shape[:-1])
    in_frame = (z > 0) & (uv >= 1.0).all(-1) & (uv <= IMAGE - 1.0).all(-1)
    _, depth_j, ids_j = render(views["w2c"][j], uv.clamp(0, IMAGE), views["with_box"])
    visible = in_frame & ((depth_j - z).abs() < 1e-6 * z)
    hidden = in_frame & (depth_j < z - 0.05)
    return uv, ids_j, visible, hidden


def expected_targets(views: dict, i: int, j: int) -> dict:
    """For every token of view i, by projection into view j (independent of the code)."""
    centres = pixel_grid(GRID, float(SCALE))  # token centres in pixels of view i
    points, _, ids = render(views["w2c"][i], centres, views["with_box"])
    uv, ids_j, visible, _ = visibility(views, i, j, points)
    token = (uv / SCALE).floor().long().clamp(0, GRID - 1)  # (col, row) in view j's grid
    clean_j = clean_tokens(views["ids"][j])[token[..., 1], token[..., 0]]
    clean_i = clean_tokens(views["ids"][i])
    # occlusion per pixel of the token's footprint
    pixel_points = views["points"][i].permute(1, 2, 0)
    _, _, pixel_visible, pixel_hidden = visibility(views, i, j, pixel_points)

    def per_token(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.reshape(GRID, SCALE, GRID, SCALE).permute(0, 2, 1, 3).flatten(2)

    hidden = per_token(pixel_hidden).all(-1) & clean_i
    # tokens that might see what view j sees: any pixel visible, or a blended (unclean)
    # token; beyond the image border counts as seen. Rows farther than 1.5 token units (a
    # 3 x 3 neighbourhood) from all of these cannot return within epsilon.
    maybe_seen = (per_token(pixel_visible).any(-1) | ~clean_i).double()[None, None]
    padded = torch.nn.functional.pad(maybe_seen, (1, 1, 1, 1), value=1.0)
    near_seen = torch.nn.functional.max_pool2d(padded, 3, stride=1)[0, 0] > 0
    return {
        "row": token[..., 1],
        "col": token[..., 0],
        "visible": visible & clean_i & clean_j & (ids_j == ids),
        "occluded": hidden,
        "deeply_occluded": hidden & ~near_seen,
    }


def targets_for(views: dict, epsilon: float = 1.5, dtype: torch.dtype = torch.float32):
    point_map = views["points"].to(dtype)[None]  # [1, 2, 3, H, W]
    valid = torch.isfinite(views["depth"])[None]
    return correspondence_targets(point_map, valid, (GRID, GRID), epsilon=epsilon)


@pytest.fixture(scope="module")
def box_scene() -> dict:
    return make_views(with_box=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("i", "j"), [(0, 1), (1, 0)])
def test_visible_tokens_match_reprojection(box_scene: dict, i: int, j: int, dtype) -> None:
    targets = targets_for(box_scene, dtype=dtype)
    assert targets.index.shape == (1, 2, 2, GRID * GRID) and targets.index.dtype == torch.long
    assert targets.mask.dtype == torch.bool
    expected = expected_targets(box_scene, i, j)
    visible = expected["visible"].flatten()
    assert visible.sum() > 100  # most of the view is checked
    index = targets.index[0, i, j]
    d_row = (index // GRID - expected["row"].flatten())[visible]
    d_col = (index % GRID - expected["col"].flatten())[visible]
    # nearest 3D sample vs the token the point projects into: the same token, or (for a
    # slanted surface seen at an angle) a direct neighbour
    assert (d_row.abs() <= 1).all() and (d_col.abs() <= 1).all()
    assert ((d_row == 0) & (d_col == 0)).double().mean() > 0.85
    # visible rows survive the cycle test
    assert targets.mask[0, i, j][visible].double().mean() > 0.95


@pytest.mark.parametrize(("i", "j"), [(0, 1), (1, 0)])
def test_occluded_tokens_removed_by_cycle_mask(box_scene: dict, i: int, j: int) -> None:
    expected = expected_targets(box_scene, i, j)
    occluded = expected["occluded"].flatten()
    deep = expected["deeply_occluded"].flatten()
    assert occluded.sum() >= 20 and deep.sum() >= 8  # the box hides a real part of the wall
    kept = targets_for(box_scene).mask[0, i, j]
    # every row more than 1.5 tokens from anything view j sees fails the round trip; at the
    # rim of the hidden region the nearest visible surface is within epsilon and may stay
    assert not kept[deep].any()
    # it is the cycle test that removes them: without it they would all be kept
    unchecked = targets_for(box_scene, epsilon=float("inf")).mask[0, i, j]
    assert unchecked[occluded].all()
    # and visible rows stay
    assert kept[expected["visible"].flatten()].double().mean() > 0.95


def test_diagonal_and_invalid_geometry_masked(box_scene: dict) -> None:
    point_map = box_scene["points"].float()[None].clone()
    valid = torch.ones(1, 2, IMAGE, IMAGE, dtype=torch.bool)
    valid[0, 0, 8:16, 20:24] = False  # exactly tokens rows 2-3, col 5 of view 0
    point_map[0, 0, :, 8:16, 20:24] = float("nan")  # garbage where invalid must not leak
    targets = correspondence_targets(point_map, valid, (GRID, GRID), epsilon=float("inf"))
    assert not targets.mask[:, torch.arange(2), torch.arange(2)].any()
    rows = targets.mask[0, 0, 1].view(GRID, GRID)
    invalid_tokens = torch.zeros(GRID, GRID, dtype=torch.bool)
    # bilinear sources of a token are its two middle pixels in each axis (4c+1, 4c+2): only
    # tokens whose sources touch the invalid block lose their row
    invalid_tokens[2:4, 5] = True
    assert not rows[invalid_tokens].any()
    assert rows[~invalid_tokens].all()
    # no key of view 1 maps to an invalid token of view 0
    keys = targets.index[0, 1, 0][targets.mask[0, 1, 0]]
    assert not invalid_tokens.flatten()[keys].any()


def test_single_view_and_bad_shapes() -> None:
    single = correspondence_targets(torch.randn(2, 1, 3, 8, 8), None, (4, 4))
    assert single.index.shape == (2, 1, 1, 16) and not single.mask.any()
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        correspondence_targets(torch.randn(2, 3, 8, 8), None, (4, 4))
    with pytest.raises(ValueError, match=r"\[B, F, H, W\]"):
        correspondence_targets(torch.randn(1, 2, 3, 8, 8), torch.ones(1, 2, 8, 7), (4, 4))


def test_view_without_geometry_gives_no_rows(box_scene: dict) -> None:
    point_map = box_scene["points"].float()[None]
    valid = torch.ones(1, 2, IMAGE, IMAGE, dtype=torch.bool)
    valid[0, 1] = False
    targets = correspondence_targets(point_map, valid, (GRID, GRID))
    assert not targets.mask.any()


def test_batch_items_are_independent_and_match_single() -> None:
    first, second = make_views(with_box=True), make_views(with_box=False)
    point_maps = torch.stack([first["points"], second["points"]]).float()
    batched = correspondence_targets(point_maps, None, (GRID, GRID))
    for b, views in enumerate((first, second)):
        single = targets_for(views)
        torch.testing.assert_close(batched.mask[b], single.mask[0])
        kept = single.mask[0]
        torch.testing.assert_close(batched.index[b][kept], single.index[0][kept])


@pytest.mark.parametrize("tokens", [77, 64])
def test_nearest_key_tokens_match_cdist_brute_force(tokens: int) -> None:
    generator = torch.Generator().manual_seed(2)
    points = torch.randn(2, 3, tokens, 3, generator=generator, dtype=f64) * 5 + 100.0
    valid = torch.rand(2, 3, tokens, generator=generator) > 0.2
    index, found = nearest_key_tokens(points.float(), valid, block_elements=4096)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                if i == j:
                    assert not found[b, i, j].any()
                    continue
                distance = torch.cdist(points[b, i], points[b, j])
                distance[:, ~valid[b, j]] = float("inf")
                assert found[b, i, j].all()
                torch.testing.assert_close(index[b, i, j], distance.argmin(-1))


def test_joint_targets_are_the_argmax_over_all_other_views_keys() -> None:
    """float64 brute force of the official `ArgmaxOneHot`: per query, the argmax of
    -|X_q - X_k| over the keys of all other views concatenated in view order; the one-hot is
    split back per view, so the other views' rows get an all-zero target (-1). The mask is
    the per-pair one."""
    generator = torch.Generator().manual_seed(5)
    views, size = 4, 8
    point_map = torch.randn(2, views, 3, size, size, generator=generator, dtype=f64)
    valid = torch.rand(2, views, size, size, generator=generator) > 0.2
    joint = correspondence_targets(point_map, valid, (size, size), selection="joint")
    per_pair = correspondence_targets(point_map, valid, (size, size), selection="per_pair")
    assert torch.equal(joint.mask, per_pair.mask)
    tokens = point_map.flatten(-2).transpose(-1, -2)  # grid = image: no resizing
    token_valid = valid.flatten(-2)
    hw = size * size
    for b in range(2):
        for i in range(views):
            others = [j for j in range(views) if j != i]
            keys = torch.cat([tokens[b, j] for j in others])
            cost = -torch.cdist(tokens[b, i], keys)
            cost[:, ~torch.cat([token_valid[b, j] for j in others])] = -float("inf")
            best = cost.argmax(-1)
            for slot, j in enumerate(others):
                here = best // hw == slot
                want = torch.where(here, best % hw, torch.full_like(best, -1))
                kept = token_valid[b, i]
                torch.testing.assert_close(joint.index[b, i, j][kept], want[kept])
    with pytest.raises(ValueError, match="selection"):
        correspondence_targets(point_map, valid, (size, size), selection="nearest")


def tied_plane_views() -> torch.Tensor:
    """[2, 4, 3, 8, 8] float64: four views of one plane on a 4 x 4 token grid (2 x 2 pixel
    blocks, so the bilinear resize is exact) built for ties: views 0 and 1 are the same, view
    2 is shifted by two tokens, view 3 by half a token (each of its points lies midway between
    two keys of the others). Every coordinate is a multiple of 1/2, so distances are exact
    and both codes see the same ties; the second sample has the views in reverse order."""
    v, u = torch.meshgrid(torch.arange(4.0, dtype=f64), torch.arange(4.0, dtype=f64), indexing="ij")
    plane = [torch.stack([u + shift, v, torch.zeros_like(u)]) for shift in (0.0, 0.0, 2.0, 0.5)]
    views = torch.stack(plane).repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    return torch.stack([views, views.flip(0)])


def official_scenes() -> list[tuple[str, torch.Tensor, int]]:
    """(name, point map [B, F, 3, S, S] float64, token grid side) for the official check."""
    from cameo_cli.data.synthetic import render_scene

    generator = torch.Generator().manual_seed(11)
    noise = torch.randn(2, 4, 3, 16, 16, generator=generator, dtype=f64)
    smooth = torch.nn.functional.interpolate(
        torch.randn(8, 3, 4, 4, generator=generator, dtype=f64), size=(16, 16), mode="bilinear"
    ).view(2, 4, 3, 16, 16)
    rendered = render_scene(seed=0, index=0, resolution=32, num_frames=4)
    scene = torch.from_numpy(rendered.point_map).permute(0, 3, 1, 2).to(f64)[None]
    return [
        ("random", noise, 8),
        ("smooth", smooth, 8),
        ("synthetic", scene, 8),
        ("tied", tied_plane_views(), 4),
    ]


@pytest.mark.parametrize("cond_num", [1, 2, 3])
@pytest.mark.parametrize("scene", range(4), ids=[s[0] for s in official_scenes()])
def test_joint_targets_match_official_transcription(scene: int, cond_num: int) -> None:
    """Index and mask of `joint` targets equal the official resize, cycle check, query-group
    slicing and `ArgmaxOneHot` (tests/official_reference.py), both fed the same point maps
    (float64, all points valid as in the official code). Ties (the tied scene) go to the
    lowest view, then the lowest token, in both."""
    name, point_map, grid = official_scenes()[scene]
    want_index, want_mask = official_joint_targets(point_map, grid, cond_num)
    got = correspondence_targets(point_map, None, (grid, grid), selection="joint")
    assert torch.equal(got.mask, want_mask), name
    assert torch.equal(got.index, want_index), name
    # the scene exercises both outcomes: kept and dropped rows, rows with and without a target
    kept = want_mask
    assert kept.any() and not kept[:, ~torch.eye(point_map.shape[1], dtype=torch.bool)].all()
    assert (want_index[kept] >= 0).any() and (want_index[kept] == -1).any()


def test_first_argmin_equals_argmin_with_ties() -> None:
    values = torch.randint(0, 3, (5, 7, 4 * GROUP), generator=torch.Generator().manual_seed(0))
    values = values.float()
    values[0, 0] = float("inf")
    torch.testing.assert_close(_first_argmin(values), values.argmin(-1))


def test_cycle_epsilon_semantics() -> None:
    """Hand-made 1 x 4 grid: the round trip lands 0, 1, 2 and 3 tokens from the query."""
    # view 0 tokens at x = 0, 1, 2, 3; view 1 has two points, at x = 0 and x = 3.1
    point_map = torch.zeros(1, 2, 3, 1, 4)
    point_map[0, 0, 0, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    point_map[0, 1, 0, 0] = torch.tensor([0.0, 0.0, 3.1, 3.1])
    targets = correspondence_targets(point_map, None, (1, 4), epsilon=1.0)
    # 0 -> key 0 -> 0 (0 away); 1 -> key 0 -> 0 (1 away); 2 -> key 2 -> 3 (1); 3 -> 2 -> 3 (0)
    assert targets.mask[0, 0, 1].tolist() == [True, True, True, True]
    assert correspondence_targets(point_map, None, (1, 4), epsilon=0.5).mask[0, 0, 1].tolist() == [
        True,
        False,
        False,
        True,
    ]


def test_point_map_from_depth_matches_renderer(box_scene: dict) -> None:
    w2c = box_scene["w2c"]
    depth = box_scene["depth"].clone()
    depth[0, 0, 0] = float("nan")
    depth[1, 5, 7] = -1.0
    points, valid = point_map_from_depth(depth, K.expand(2, 3, 3), w2c)
    assert points.shape == (2, 3, IMAGE, IMAGE) and points.dtype == f64
    assert not valid[0, 0, 0] and not valid[1, 5, 7] and valid.sum() == 2 * IMAGE * IMAGE - 2
    assert torch.isfinite(points).all()
    expected = box_scene["points"]
    torch.testing.assert_close(
        points.permute(0, 2, 3, 1)[valid], expected.permute(0, 2, 3, 1)[valid]
    )


@pytest.mark.parametrize(
    ("size", "grid"),
    [((64, 64), (16, 16)), ((48, 80), (7, 11)), ((8, 8), (8, 8)), ((5, 6), (9, 4))],
)
def test_resize_point_map_matches_torch_bilinear(size, grid) -> None:
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(2, 3, 3, *size, generator=generator, dtype=f64)
    valid = torch.rand(2, 3, *size, generator=generator) > 0.05
    resized, token_ok = resize_point_map(points, valid, grid)
    reference = torch.nn.functional.interpolate(
        points.flatten(0, 1), size=grid, mode="bilinear", align_corners=False
    ).view(2, 3, 3, *grid)
    invalid_share = torch.nn.functional.interpolate(
        (~valid).to(f64).flatten(0, 1)[:, None], size=grid, mode="bilinear", align_corners=False
    ).view(2, 3, *grid)
    torch.testing.assert_close(token_ok, invalid_share == 0)
    assert token_ok.any() and not token_ok.all()
    ok = token_ok.unsqueeze(2).expand_as(resized)
    torch.testing.assert_close(resized[ok], reference[ok])
    assert (resized[~ok] == 0).all()


def test_resize_point_map_identity_and_plane_exactness() -> None:
    points = torch.randn(2, 3, 8, 8, dtype=f64)
    same, valid = resize_point_map(points, None, (8, 8))
    torch.testing.assert_close(same, points)
    assert valid.all()
    # an affine point map (points linear in pixel coordinates) is resized exactly
    v, u = torch.meshgrid(torch.arange(8.0) + 0.5, torch.arange(8.0) + 0.5, indexing="ij")
    affine = torch.stack([u, 2 * v, u + v]).to(f64)
    small, _ = resize_point_map(affine, None, (2, 2))
    centres = torch.tensor([2.0, 6.0], dtype=f64)
    vv, uu = torch.meshgrid(centres, centres, indexing="ij")
    torch.testing.assert_close(small, torch.stack([uu, 2 * vv, uu + vv]))


def test_vggt_missing_package_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CameoError, match="pip install"):
        VGGTDepth(tmp_path / "missing.safetensors")
    with pytest.raises(CameoError, match="not found"):
        weights_file(tmp_path / "missing.pt")
    with pytest.raises(CameoError, match="no VGGT weights"):
        weights_file(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"")
    assert weights_file(tmp_path) == tmp_path / "model.pt"


@pytest.mark.parametrize(("i", "j"), [(0, 1), (0, 4), (2, 5)])
def test_synthetic_dataset_views_match_reprojection(i: int, j: int) -> None:
    """The same independent check on views rendered by cameo's procedural dataset."""
    from cameo_cli.data.synthetic import render_scene

    scene = render_scene(seed=0, index=0, resolution=IMAGE, num_frames=6)
    point_map = torch.from_numpy(scene.point_map).permute(0, 3, 1, 2)[[i, j]]
    depth = torch.from_numpy(scene.depth).double()
    K_j = torch.from_numpy(scene.intrinsics[j])
    w2c_j = torch.from_numpy(scene.world_to_camera[j])
    targets = correspondence_targets(point_map[None], None, (GRID, GRID))
    # expected: the token's point (torch's own bilinear resize) projected into view j, kept
    # where view j's depth map agrees (visible) and the token's footprint is one surface
    tokens = (
        torch.nn.functional.interpolate(
            point_map[:1].double(), size=(GRID, GRID), mode="bilinear", align_corners=False
        )[0]
        .flatten(1)
        .T
    )
    uv, z = cameras.project_points(tokens, K_j, w2c_j)
    in_frame = (z > 0) & (uv >= 0).all(-1) & (uv < IMAGE).all(-1)
    pixel = uv.clamp(0, IMAGE - 1e-3).floor().long()
    visible = in_frame & ((depth[j][pixel[:, 1], pixel[:, 0]] - z).abs() < 0.03 * z)
    footprint = depth[i].reshape(GRID, SCALE, GRID, SCALE).permute(0, 2, 1, 3).flatten(2)
    one_surface = (footprint.amax(-1) - footprint.amin(-1) < 0.1 * footprint.amin(-1)).flatten()
    checked = visible & one_surface
    assert checked.sum() > 120
    expected = (uv / SCALE).floor().long()
    index = targets.index[0, 0, 1]
    d_row = (index // GRID - expected[:, 1])[checked]
    d_col = (index % GRID - expected[:, 0])[checked]
    assert (d_row.abs() <= 1).all() and (d_col.abs() <= 1).all()
    assert ((d_row == 0) & (d_col == 0)).double().mean() > 0.85
    assert targets.mask[0, 0, 1][checked].double().mean() > 0.95


def test_targets_unchanged_under_bf16_autocast(box_scene: dict) -> None:
    plain = targets_for(box_scene)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = targets_for(box_scene)
    assert torch.equal(plain.mask, under.mask) and torch.equal(plain.index, under.index)
