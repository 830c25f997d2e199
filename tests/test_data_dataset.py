"""MultiViewDataset: sampling policies, determinism, resize + crop with consistent geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rich.console import Console

from cameo_cli import cameras
from cameo_cli.data.dataset import MultiViewDataset, load_eval_index, order_views, sample_frames
from cameo_cli.data.records import FrameData, SceneData, SceneSource, Skip
from cameo_cli.data.shards import prepare_dataset
from cameo_cli.data.synthetic import render_scene
from cameo_cli.errors import CameoError


class CroppedSynthetic(SceneSource):
    """Synthetic renders cropped to a 48 x 64 (H x W) frame, K shifted accordingly."""

    dataset = "cropped-synthetic"

    def options(self) -> dict:
        return {}

    def list_scenes(self) -> tuple[list[str], list[Skip]]:
        return ["wide"], []

    def load_scene(self, scene: str) -> SceneData:
        render = render_scene(seed=5, index=0, resolution=64, num_frames=6)
        K = cameras.crop_intrinsics(torch.from_numpy(render.intrinsics), top=8, left=0).numpy()
        frames = [
            FrameData(
                name=str(k),
                image=np.ascontiguousarray(render.images[k, 8:56]),
                intrinsics=K[k],
                world_to_camera=render.world_to_camera[k],
                depth=np.ascontiguousarray(render.depth[k, 8:56]),
            )
            for k in range(6)
        ]
        return SceneData(scene, frames)


@pytest.fixture(scope="module")
def wide_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("wide") / "ds"
    prepare_dataset(CroppedSynthetic(), out, console=Console(quiet=True))
    return out


def test_sample_frames_respects_the_gap():
    rng = np.random.default_rng(0)
    for _ in range(200):
        frames = sample_frames(num_frames=30, num_views=4, frame_gap=(5, 9), rng=rng)
        assert len(set(frames)) == 4 and frames == sorted(frames)
        assert 5 <= frames[-1] - frames[0] <= 9 and 0 <= frames[0] and frames[-1] < 30
    # a scene shorter than the gap: the whole scene is the window
    frames = sample_frames(num_frames=4, num_views=4, frame_gap=(10, 20), rng=rng)
    assert frames == [0, 1, 2, 3]


def test_even_order_spaces_references():
    rng = np.random.default_rng(0)
    assert order_views([10, 11, 12, 13], 2, "even", rng) == [10, 13, 11, 12]
    assert order_views([10, 11, 12, 13], 1, "even", rng) == [11, 10, 12, 13]
    assert order_views([10, 11, 12, 13], 3, "even", rng) == [10, 12, 13, 11]
    shuffled = order_views([10, 11, 12, 13], 2, "random", rng)
    assert sorted(shuffled) == [10, 11, 12, 13]
    with pytest.raises(CameoError, match="order"):
        order_views([1, 2], 1, "spiral", rng)


def test_items_follow_the_interface(synthetic_dataset):
    ds = MultiViewDataset(synthetic_dataset, num_views=4, resolution=32, seed=1)
    assert len(ds) == 3 and ds.has_geometry
    item = ds[0]
    assert item["images"].shape == (4, 3, 32, 32) and item["images"].dtype == torch.float32
    assert -1 <= item["images"].min() and item["images"].max() <= 1
    assert item["intrinsics"].shape == (4, 3, 3) and item["world_to_camera"].shape == (4, 4, 4)
    assert item["point_map"].shape == (4, 3, 32, 32) and item["point_valid"].all()
    refs = int(item["ref_mask"].sum())
    assert 1 <= refs <= 3 and item["ref_mask"][:refs].all()
    assert item["frames"].dtype == torch.long and isinstance(item["scene"], str)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["images"].shape == (2, 4, 3, 32, 32)


def test_sampling_is_deterministic_per_seed_epoch_and_item(synthetic_dataset):
    a = MultiViewDataset(synthetic_dataset, seed=3)
    b = MultiViewDataset(synthetic_dataset, seed=3)
    draws = [a.sample(i) for i in range(3)]
    assert draws == [b.sample(i) for i in range(3)]
    assert torch.equal(a[2]["images"], b[2]["images"])
    a.set_epoch(1)
    other_epoch = [a.sample(i) for i in range(3)]
    c = MultiViewDataset(synthetic_dataset, seed=4)
    assert other_epoch != draws and [c.sample(i) for i in range(3)] != draws


def test_resize_crop_updates_intrinsics_and_keeps_geometry_consistent(wide_dataset):
    ds = MultiViewDataset(wide_dataset, num_views=3, resolution=32)
    item = ds.get_views("wide", [0, 2, 5], num_refs=1)
    # 48 x 64 -> shorter side 32: 32 x 43 (rounded), centre crop from column 5
    K_stored = torch.from_numpy(ds.reader.cameras("wide")[0][0])
    expected = K_stored.clone()
    expected[0] *= 43 / 64
    expected[1] *= 32 / 48
    expected[0, 2] -= 5
    assert torch.allclose(item["intrinsics"][0].double(), expected, atol=1e-5)
    # every point of the resized point map projects back onto (near) its own pixel centre
    points = item["point_map"].double().permute(0, 2, 3, 1).reshape(3, -1, 3)
    pixels, depth = cameras.project_points(
        points, item["intrinsics"].double(), item["world_to_camera"].double()
    )
    centres = cameras.pixel_centers(32, 32, dtype=torch.float64)[..., :2].reshape(-1, 2)
    assert (depth > 0).all()
    assert (pixels - centres).abs().max() <= 0.5 * 43 / 64 + 1e-4
    assert item["images"].shape == (3, 3, 32, 32)


def test_eval_index_is_served_by_get_views(synthetic_dataset):
    views = load_eval_index(synthetic_dataset)
    ds = MultiViewDataset(synthetic_dataset, resolution=32)
    scene, entry = next(iter(views.items()))
    item = ds.get_views(scene, entry["context"] + entry["target"], len(entry["context"]))
    assert item["frames"].tolist() == entry["context"] + entry["target"]
    assert item["ref_mask"].tolist() == [True] * len(entry["context"]) + [False] * len(
        entry["target"]
    )


def test_bad_requests_are_clear_errors(synthetic_dataset, tmp_path):
    ds = MultiViewDataset(synthetic_dataset)
    with pytest.raises(CameoError, match="outside"):
        ds.get_views("synth-00000", [0, 99], 1)
    with pytest.raises(CameoError, match="not in index.json"):
        ds.get_views("nope", [0, 1], 1)
    with pytest.raises(CameoError, match="has 9 frames"):
        MultiViewDataset(synthetic_dataset, num_views=9)
    with pytest.raises(CameoError, match="not found"):
        MultiViewDataset(tmp_path)
    (tmp_path / "eval_index.json").write_text(json.dumps({"s": {"context": []}}))
    with pytest.raises(CameoError, match="context"):
        load_eval_index(tmp_path)


def test_reader_keeps_few_shards_open_and_pickles(synthetic_dataset):
    import pickle

    ds = MultiViewDataset(synthetic_dataset)
    ds.reader.max_open = 1
    first = ds.get_views("synth-00000", [0, 1], 1)  # shard 0
    ds.get_views("synth-00002", [0, 1], 1)  # shard 1 replaces it
    assert list(ds.reader._open) == [1]
    again = ds.get_views("synth-00000", [0, 1], 1)
    assert torch.equal(first["images"], again["images"])
    clone = pickle.loads(pickle.dumps(ds))  # what DataLoader workers receive under spawn
    assert torch.equal(clone.get_views("synth-00000", [0, 1], 1)["images"], first["images"])
