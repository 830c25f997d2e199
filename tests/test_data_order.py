"""The official training recipe's data rules: one reference count and view order per batch,
camera drop per batch, and `train.batch_size` as the global batch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from cameo_cli.config import TrainConfig, dump_recipe, load_recipe, recipe_from_dict
from cameo_cli.data.dataset import (
    MultiViewDataset,
    OfficialOrder,
    batch_rng,
    official_positions,
)
from cameo_cli.errors import CameoError
from cameo_cli.train.data import EpochItems, ResumableBatchSampler, make_loader, per_process_batch
from cameo_cli.train.loop import camera_drop
from cameo_cli.train.objective import sample_generators

BATCHES = 2000
CHI2_DF2_999 = 13.8  # chi-square, 2 degrees of freedom, 99.9 % quantile


def _official_draws(seed: int = 0) -> list[OfficialOrder]:
    return [OfficialOrder.draw(batch_rng(seed, k, "order"), 4, 1, 3) for k in range(BATCHES)]


def test_official_positions_follow_the_official_linspace():
    """Evenly spaced references as the official `uniform_push_batch` picks them."""
    assert [official_positions(4, n) for n in (1, 2, 3)] == [[1], [0, 3], [0, 1, 3]]
    for views in range(2, 9):
        assert official_positions(views, 1) == [views // 2 - 1]
        for refs in range(2, views):
            expected = torch.linspace(0, views - 1, refs, dtype=torch.long).tolist()
            assert official_positions(views, refs) == expected


def test_official_counts_uniform_and_half_the_batches_shuffled():
    draws = _official_draws()
    counts = np.bincount([d.num_refs for d in draws], minlength=4)[1:]
    expected = BATCHES / 3
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_DF2_999, counts
    shuffled = sum(d.permutation is not None for d in draws) / BATCHES
    assert abs(shuffled - 0.5) < 5 * (0.25 / BATCHES) ** 0.5, shuffled
    for draw in draws:
        if draw.permutation is not None:
            assert sorted(draw.permutation) == [0, 1, 2, 3]
    # Not shuffled: references evenly spaced first, the targets last in time order.
    even = next(d for d in draws if d.permutation is None and d.num_refs == 3)
    assert even.apply([10, 11, 12, 13]) == [10, 11, 13, 12]


def test_official_order_is_one_draw_per_batch(synthetic_dataset):
    ds = MultiViewDataset(synthetic_dataset, num_views=4, order="official", seed=0)
    for batch, draw in enumerate(_official_draws()[:200]):
        samples = [ds.sample(item, batch) for item in range(min(3, len(ds)))]
        assert {refs for _, _, refs in samples} == {draw.num_refs}
        for _, frames, _ in samples:
            assert frames == draw.apply(sorted(frames))
    # Outside a training batch an item draws its own count and order.
    item = ds[0]
    assert 1 <= int(item["ref_mask"].sum()) <= 3 and not item["ref_mask"][-1]


def _stream(batch_size: int, *, world_size: int = 1, rank: int = 0, start: int = 0):
    """Batches of (epoch, item, global batch) keys over the 3 synthetic scenes."""
    sampler = ResumableBatchSampler(
        3, batch_size, world_size=world_size, rank=rank, seed=3, start=start
    )
    return iter(sampler)


def test_batch_draws_survive_resume_and_split_over_ranks(synthetic_dataset):
    ds = MultiViewDataset(synthetic_dataset, num_views=4, order="official", seed=5)

    def read(epoch: int, item: int, batch: int) -> tuple[str, list[int], int]:
        ds.set_epoch(epoch)
        return ds.sample(item, batch)

    def draws(batches):
        return [[read(*key) for key in batch] for batch in batches]

    full = draws(itertools.islice(_stream(4), 12))
    resumed = draws(itertools.islice(_stream(4, start=5), 7))
    assert resumed == full[5:]
    ranks = [draws(itertools.islice(_stream(2, world_size=2, rank=r), 12)) for r in (0, 1)]
    for a, b, whole in zip(*ranks, full, strict=True):
        assert a + b == whole
        assert len({refs for _, _, refs in whole}) == 1  # both ranks share the batch's count
    # The loader path reads the same draw: the item's reference mask holds the batch's count.
    epoch, item, batch = next(_stream(4, start=2))[0]
    views = EpochItems(ds)[(epoch, item, batch)]
    assert int(views["ref_mask"].sum()) == full[2][0][2]


def test_per_sample_orders_are_unchanged_by_the_batch(synthetic_dataset):
    ds = MultiViewDataset(synthetic_dataset, num_views=4, order="random", seed=5)
    assert [ds.sample(i, 7) for i in range(3)] == [ds.sample(i) for i in range(3)]


def test_camera_drop_scopes():
    train = TrainConfig(camera_drop=0.1, camera_drop_scope="batch", seed=2)
    tolerance = 5 * (0.09 / BATCHES) ** 0.5
    ranks = [sample_generators(0, 4 * r, 4) for r in (0, 1)]
    masks = [torch.stack([camera_drop(train, k, g) for k in range(BATCHES)]) for g in ranks]
    assert torch.equal(masks[0], masks[1])  # every process drops the same global batches
    per_batch = masks[0].float().mean(1)
    assert set(per_batch.tolist()) <= {0.0, 1.0}
    assert abs(per_batch.mean().item() - 0.1) < tolerance
    sample = TrainConfig(camera_drop=0.1, camera_drop_scope="sample")
    drops = torch.stack(
        [camera_drop(sample, k, sample_generators(0, 4 * k, 4)) for k in range(BATCHES)]
    )
    mixed = ((drops.sum(1) > 0) & (drops.sum(1) < 4)).float().mean().item()
    assert mixed > 0.2  # independent per sample: most dropping batches keep other cameras
    assert abs(drops.float().mean().item() - 0.1) < tolerance


def test_global_batch_is_split_over_processes(synthetic_dataset):
    assert per_process_batch(6, 1) == 6 and per_process_batch(6, 2) == 3
    with pytest.raises(CameoError, match=r"train\.batch_size 6 .* 4 processes"):
        per_process_batch(6, 4)
    ds = MultiViewDataset(synthetic_dataset, num_views=4, resolution=16)
    loader = make_loader(ds, 4, world_size=2, rank=1, seed=0, start=0, workers=0)
    assert next(iter(loader)).images.shape[0] == 2
    with pytest.raises(CameoError, match="train.batch_size 3"):
        make_loader(ds, 3, world_size=2, rank=0, seed=0, start=0, workers=0)


def test_old_policy_key_still_loads(tmp_path):
    assert recipe_from_dict({"data": {"policy": "even"}}).data.order == "even"
    with pytest.raises(CameoError, match="renamed to 'data.order'"):
        recipe_from_dict({"data": {"policy": "even", "order": "random"}})
    old = tmp_path / "config.yaml"  # a run folder's config.yaml written by cameo 0.1.0
    old.write_text("data:\n  policy: random\ntrain:\n  camera_drop: 0.1\n")
    recipe = load_recipe(old)
    assert (recipe.data.order, recipe.train.camera_drop_scope) == ("random", "sample")
    dump_recipe(recipe, tmp_path / "new.yaml")
    assert "order: random" in (tmp_path / "new.yaml").read_text()
    assert load_recipe(tmp_path / "new.yaml") == recipe


@pytest.mark.parametrize(
    "name", ["cat3d-re10k", "cat3d-re10k-baseline", "mvgenmaster-re10k", "hunyuan-dit-re10k"]
)
def test_paper_recipes_train_as_the_official_code(name):
    recipe = load_recipe(name)
    assert (recipe.data.order, recipe.train.camera_drop_scope) == ("official", "batch")
    assert recipe.train.batch_size == 6


def test_quickstart_keeps_per_sample_rules():
    recipe = load_recipe("quickstart-cpu")
    assert (recipe.data.order, recipe.train.camera_drop_scope) == ("random", "sample")
