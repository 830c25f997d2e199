"""VGGT depth + the dataset's cameras (one scale per scene, overlapping windows), against the
exact geometry of a rendered synthetic scene, with a stand-in VGGT (`tests/vggt_standin.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from cameo_cli.data.dataset import MultiViewDataset
from cameo_cli.data.records import SceneData, SceneSource, Skip
from cameo_cli.data.shards import load_index, prepare_dataset
from cameo_cli.data.synthetic import render_scene, scene_data
from cameo_cli.data.vggt_scenes import VGGTSettings
from cameo_cli.geometry import correspondence_targets
from cameo_cli.geometry.scale_fit import windows
from tests import vggt_standin

FRAMES, SIZE, GRID = 16, 64, (8, 8)
SETTINGS = VGGTSettings(window=8, overlap=4)  # 16 frames: windows 0-7, 4-11, 8-15


@pytest.fixture(scope="module")
def render():
    return render_scene(seed=3, index=0, resolution=SIZE, num_frames=FRAMES)


class RenderSource(SceneSource):
    """One scene of a render; with or without its exact depth."""

    dataset = "render"

    def __init__(self, render, exact: bool) -> None:
        self.render, self.exact = render, exact

    def options(self) -> dict:
        return {"exact": self.exact}

    def list_scenes(self) -> tuple[list[str], list[Skip]]:
        return ["scene"], []

    def load_scene(self, scene: str) -> SceneData:
        return scene_data(self.render, scene, with_depth=self.exact)


def _weights(folder: Path) -> Path:
    path = folder / "model.safetensors"
    vggt_standin.save_weights(path)
    return path


@pytest.fixture(scope="module")
def datasets(render, tmp_path_factory):
    """(VGGT dataset, exact dataset), both with depth at full resolution, and the stand-in."""
    monkeypatch = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("vggt")
    state = vggt_standin.install(monkeypatch, render)
    quiet = Console(quiet=True)
    prepare_dataset(
        RenderSource(render, exact=False),
        folder / "vggt",
        vggt_weights=_weights(folder),
        vggt_settings=SETTINGS,
        depth_divisor=1,
        console=quiet,
    )
    prepare_dataset(
        RenderSource(render, exact=True), folder / "exact", depth_divisor=1, console=quiet
    )
    yield folder / "vggt", folder / "exact", state
    monkeypatch.undo()


def test_windows_overlap_and_cover_the_scene() -> None:
    assert windows(5, 8, 4) == [range(5)]
    assert windows(16, 8, 4) == [range(0, 8), range(4, 12), range(8, 16)]
    spans = windows(29, 10, 3)
    assert spans[0].start == 0 and spans[-1].stop == 29
    assert all(a.stop - b.start >= 3 for a, b in zip(spans, spans[1:], strict=False))


def test_point_maps_match_the_truth_in_one_frame_and_scale(datasets, render) -> None:
    vggt_root, _, state = datasets
    # the stand-in was called once per window, each call with its own similarity transform
    assert state["calls"] == [list(s) for s in windows(FRAMES, 8, 4)]
    assert len({round(s[0], 6) for s in state["similarity"]}) == 3
    meta = load_index(vggt_root)["scenes"]["scene"]
    fit = meta["vggt_fit"]
    assert fit["windows"] == 3 and fit["residual"] < 0.02 and fit["rotation_error_deg"] < 0.01
    dataset = MultiViewDataset(vggt_root, num_views=4)
    item = dataset.get_views("scene", list(range(FRAMES)), num_refs=1)
    points = item["point_map"].double().permute(0, 2, 3, 1)  # [F, H, W, 3]
    valid = item["point_valid"]
    truth = torch.from_numpy(render.point_map).double()
    depth = torch.from_numpy(render.depth).double()
    assert valid.float().mean() > 0.6  # confidence (20 % dropped) and depth-edge masks
    error = (points - truth).norm(dim=-1)[valid] / depth[valid]
    # depth noise 0.3 %, pose noise 0.3 % of the camera spread: points within 2 % of their
    # depth everywhere, 0.5 % in the median
    assert error.median() < 0.005 and error.max() < 0.02
    # every frame in the same scale: the per-frame median ratio to the truth agrees to 0.5 %
    ratio = [
        float(((points[k] - truth[k]).norm(dim=-1)[valid[k]] / depth[k][valid[k]]).median())
        for k in range(FRAMES)
    ]
    assert max(ratio) < 0.005


def _items(datasets, frames: list[int]) -> tuple[dict, dict]:
    vggt_root, exact_root, _ = datasets
    return tuple(
        MultiViewDataset(root, num_views=4).get_views("scene", frames, num_refs=1)
        for root in (vggt_root, exact_root)
    )


def _targets(points: torch.Tensor, valid: torch.Tensor, selection: str = "per_pair"):
    return correspondence_targets(points[None], valid[None], GRID, selection=selection)


@pytest.mark.parametrize("selection", ["per_pair", "joint"])
def test_a_sample_across_two_windows_gets_the_exact_targets(datasets, selection) -> None:
    frames = [1, 3, 12, 14]  # windows 0 and 2 (frames 1, 3 live in 0; 12, 14 in 2)
    ours, exact = _items(datasets, frames)
    valid = ours["point_valid"]
    assert (valid <= exact["point_valid"]).all()  # VGGT only removes pixels
    mine = _targets(ours["point_map"], valid, selection)
    # the exact geometry, read through the same validity (confidence and edge masks drop
    # tokens, which moves some nearest keys; that is the masks' job, not a geometry error)
    truth = _targets(exact["point_map"], valid, selection)
    assert torch.equal(mine.mask, truth.mask)
    same = (mine.index == truth.index)[truth.mask].double().mean()
    assert same >= 0.99, f"{float(same):.4f} of the rows agree"
    unmasked = _targets(exact["point_map"], exact["point_valid"], selection)
    assert mine.mask.sum() > 0.5 * unmasked.mask.sum()  # most rows survive the masks


def test_no_target_key_on_a_depth_edge_that_exact_geometry_avoids(datasets, render) -> None:
    frames = [0, 5, 10, 15]
    ours, exact = _items(datasets, frames)
    mine = _targets(ours["point_map"], ours["point_valid"])
    truth = _targets(exact["point_map"], exact["point_valid"])
    # edge tokens: the 2 x 2 pixels a token's bilinear resize reads span a depth ratio > 1.1
    depth = torch.from_numpy(render.depth[frames]).double()
    step, a = SIZE // GRID[0], SIZE // GRID[0] // 2
    corners = [depth[:, r::step, c::step] for r in (a - 1, a) for c in (a - 1, a)]
    pixels = torch.stack(corners)
    edge = (pixels.amax(0) > 1.1 * pixels.amin(0)).flatten(1)  # [F, hw]
    assert edge.any()
    views = torch.arange(4)[None, :, None].expand_as(mine.index[0])
    key_on_edge = edge[views, mine.index[0]] & mine.mask[0]
    allowed = truth.mask[0] & (truth.index[0] == mine.index[0])
    assert not (key_on_edge & ~allowed).any()


def _write_re10k(root: Path, render, clip: str, w2c: np.ndarray) -> None:
    """A RealEstate10K clip (camera file + frames named by timestamp) from a render."""
    folder = root / "train" / clip
    folder.mkdir(parents=True)
    K = render.intrinsics[0]
    lines = ["https://www.youtube.com/watch?v=test"]
    for k, pose in enumerate(w2c):
        t = 1000 * k
        Image.fromarray(render.images[k]).save(folder / f"{t}.png")
        values = [K[0, 0] / SIZE, K[1, 1] / SIZE, K[0, 2] / SIZE, K[1, 2] / SIZE, 0, 0]
        lines.append(" ".join(str(v) for v in [t, *values, *pose[:3].reshape(-1)]))
    (root / "train" / f"{clip}.txt").write_text("\n".join(lines) + "\n")


def test_prepare_re10k_reports_the_fit_and_skips_bad_scenes(render, tmp_path, monkeypatch):
    from cameo_cli.cli import main

    vggt_standin.install(monkeypatch, render)
    root = tmp_path / "re10k"
    _write_re10k(root, render, "good", render.world_to_camera)
    still = np.repeat(render.world_to_camera[:1], FRAMES, axis=0)  # the poses do not move
    _write_re10k(root, render, "still", still)
    wrong = render.world_to_camera.copy()
    wrong[:, :3, 3] = wrong[::-1, :3, 3]  # translations of other frames: cameras disagree
    _write_re10k(root, render, "wrong", wrong)
    args = ["prepare", "re10k", "--root", str(root), "--out", str(tmp_path / "out")]
    args += ["--geometry", "vggt", "--vggt-weights", str(_weights(tmp_path))]
    result = CliRunner().invoke(main, [*args, "--vggt-window", "8", "--vggt-overlap", "4"])
    assert result.exit_code == 0, result.output
    assert "centre residual" in result.output and "good" in result.output
    index = load_index(tmp_path / "out")
    assert list(index["scenes"]) == ["good"]
    reasons = {s["item"]: s["reason"] for s in index["skipped"]}
    assert "do not move" in reasons["still"] and "residual" in reasons["wrong"]
    assert index["source"]["options"]["vggt"]["window"] == 8


def test_scale_fit_on_a_straight_line_trajectory() -> None:
    """Cameras moving along one line (RealEstate10K's usual dolly): the scale is exact and
    the orientations agree, whatever similarity VGGT's frame is under."""
    from scipy.spatial.transform import Rotation

    from cameo_cli.geometry.scale_fit import fit_shared_scale

    rng = np.random.default_rng(1)
    count = 10
    rot = Rotation.random(count, random_state=2).as_matrix()  # world-from-camera
    centres = np.outer(np.linspace(0.0, 1.0, count), [0.3, -0.1, 0.9])
    dataset = np.tile(np.eye(4), (count, 1, 1))
    dataset[:, :3, :3] = rot.transpose(0, 2, 1)
    dataset[:, :3, 3] = -np.einsum("nij,nj->ni", dataset[:, :3, :3], centres)
    scale, frame = 0.37, Rotation.random(random_state=3).as_matrix()
    moved = scale * centres @ frame.T + rng.normal(size=3)
    vggt = np.tile(np.eye(4), (count, 1, 1))
    vggt[:, :3, :3] = np.einsum("nji,kj->nik", rot, frame)  # (frame @ rot)^T
    vggt[:, :3, 3] = -np.einsum("nij,nj->ni", vggt[:, :3, :3], moved)
    spans = [range(0, 6), range(4, 10)]
    fit = fit_shared_scale(
        spans,
        [torch.from_numpy(vggt[s.start : s.stop]) for s in spans],
        [1.0, 1.0],
        torch.from_numpy(dataset),
    )
    assert abs(fit.scale - 1 / scale) < 1e-9 and fit.residual < 1e-9
    assert fit.rotation_error < 1e-6
    with pytest.raises(ValueError, match="do not move"):
        still = np.repeat(dataset[:1], count, axis=0)
        fit_shared_scale([range(count)], [torch.from_numpy(vggt)], [1.0], torch.from_numpy(still))
