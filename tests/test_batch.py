"""The one batch type (cameo_cli.batch.ViewBatch), its one conversion into ViewConditioning
and the one "noise the targets, keep the references clean" (cameo_cli.diffusion)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import send_to_device
from torch import nn

from cameo_cli.backbone import ViewConditioning
from cameo_cli.batch import ViewBatch
from cameo_cli.camera_files import CameraSet
from cameo_cli.cameras import unproject_depth
from cameo_cli.codec import PixelCodec
from cameo_cli.config import DataConfig, DiffusionConfig
from cameo_cli.data.dataset import MultiViewDataset
from cameo_cli.diagnose.job import DiagnosedModel, probe_all
from cameo_cli.diffusion import make_train_scheduler, noise_targets
from cameo_cli.pipeline import MultiViewPipeline, reference_depth
from cameo_cli.train.data import make_loader
from cameo_cli.train.validation import one_step_views
from tests.stubs import StubBackbone

DIFFUSION = DiffusionConfig()


def make_batch(batch: int = 2, views: int = 4, refs: int = 2, size: int = 8) -> ViewBatch:
    """Images on a 1/8 grid (exact through [0, 1] <-> [-1, 1]), point maps, distinct cameras."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(-8, 9, (batch, views, 3, size, size), generator=generator) / 8
    w2c = torch.eye(4).repeat(batch, views, 1, 1)
    w2c[..., 0, 3] = torch.arange(batch * views).view(batch, views) * 0.25
    K = torch.tensor([[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]]).repeat(batch, views, 1, 1)
    return ViewBatch(
        images=images,
        intrinsics=K,
        world_to_camera=w2c,
        ref_mask=(torch.arange(views) < refs).expand(batch, views).clone(),
        scenes=[f"scene-{b}" for b in range(batch)],
        frames=torch.arange(views).repeat(batch, 1),
        point_map=torch.randn(batch, views, 3, size, size, generator=generator),
        point_valid=torch.rand(batch, views, size, size, generator=generator) > 0.3,
    )


class RecordingBackbone(StubBackbone):
    """Predicts zeros and records every conditioning it is given (one weight, so that
    there is a device to follow)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))


def test_collate_stacks_dataset_items(synthetic_dataset):
    dataset = MultiViewDataset(synthetic_dataset)
    items = [dataset[0], dataset[1]]
    batch = ViewBatch.collate(items)
    reference = torch.utils.data.default_collate(items)
    assert batch.scenes == reference["scene"]
    for name in ("images", "intrinsics", "world_to_camera", "ref_mask", "frames"):
        assert torch.equal(getattr(batch, name), reference[name])
    assert batch.image_size == (32, 32) and batch.num_views == 4 and batch.batch_size == 2
    one = ViewBatch.from_item(dataset.get_views("synth-00000", [0, 2, 5], 1))
    assert one.images.shape == (1, 3, 3, 32, 32) and one.scenes == ["synth-00000"]
    assert one.ref_mask.tolist() == [[True, False, False]]
    assert one.frames.dtype == torch.long and one.frames.tolist() == [[0, 2, 5]]


def test_loader_yields_view_batches(synthetic_dataset):
    dataset = MultiViewDataset(synthetic_dataset)
    loader = make_loader(dataset, 2, world_size=1, rank=0, seed=0, start=0, workers=0)
    batch = next(iter(loader))
    assert isinstance(batch, ViewBatch) and batch.images.shape == (2, 4, 3, 32, 32)


def test_shapes_are_checked():
    batch = make_batch()
    with pytest.raises(ValueError, match="ref_mask"):
        ViewBatch(**{**batch.__dict__, "ref_mask": batch.ref_mask[:, :3]})
    with pytest.raises(ValueError, match="scene names"):
        ViewBatch(**{**batch.__dict__, "scenes": ["one"]})


def test_accelerate_send_to_device_moves_every_tensor():
    batch = make_batch()
    moved = send_to_device(batch, torch.device("meta"), non_blocking=True)
    assert isinstance(moved, ViewBatch) and moved.scenes == batch.scenes
    for name in ("images", "intrinsics", "world_to_camera", "ref_mask", "frames"):
        tensor = getattr(moved, name)
        assert tensor.is_meta and tensor.dtype == getattr(batch, name).dtype
    assert moved.point_map.is_meta and moved.point_valid.is_meta and moved.object_mask is None
    assert batch.images.device.type == "cpu"  # a copy; the original stays


def test_from_batch_gives_references_only():
    batch = make_batch()
    batch.images[~batch.ref_mask] = float("nan")  # target pixels must not reach the model
    drop = torch.tensor([True, False])
    cond = ViewConditioning.from_batch(batch, drop_camera=drop)
    refs = batch.ref_mask
    assert cond.image_size == (8, 8) and torch.equal(cond.drop_camera, drop)
    assert torch.equal(cond.intrinsics, batch.intrinsics)
    assert torch.equal(cond.world_to_camera, batch.world_to_camera)
    assert torch.equal(cond.ref_mask, refs)
    assert torch.equal(cond.ref_images[refs], batch.images[refs])
    assert torch.equal(cond.point_map[refs], batch.point_map[refs])
    assert torch.equal(cond.point_valid[refs], batch.point_valid[refs])
    assert not cond.ref_images[~refs].any() and not cond.ref_images.isnan().any()
    assert not cond.point_map[~refs].any() and not cond.point_valid[~refs].any()


def test_noise_targets_matches_the_forward_process_in_float64():
    scheduler = make_train_scheduler(DIFFUSION)
    generator = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 3, 4, 5, 5, generator=generator, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    timesteps = torch.tensor([10, 900])
    ref_mask = torch.tensor([[True, False, False], [False, True, True]])
    noisy = noise_targets(scheduler, x0, noise, timesteps, ref_mask)
    alpha_bar = scheduler.alphas_cumprod.double()[timesteps].view(2, 1, 1, 1, 1)
    expected = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    expected = torch.where(ref_mask[:, :, None, None, None], x0, expected)
    torch.testing.assert_close(noisy, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(noisy[ref_mask], x0[ref_mask])


def test_target_conditioning_is_identical_in_train_validation_diagnose_and_pipeline():
    batch = make_batch(batch=1, views=4, refs=2).with_domain("co3d")  # as the trainer's
    depth = 1 + torch.rand(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    batch.point_map = unproject_depth(depth, batch.intrinsics, batch.world_to_camera)
    train = ViewConditioning.from_batch(batch, drop_camera=torch.tensor([False]))

    backbone = RecordingBackbone()
    scheduler = make_train_scheduler(DIFFUSION)
    one_step_views(backbone, PixelCodec(), scheduler, batch, seed=0)
    model = DiagnosedModel(
        backbone,
        PixelCodec(),
        SimpleNamespace(diffusion=DIFFUSION, data=DataConfig(domain="co3d")),
        variant="tiny",
    )
    probe_all(model, batch, [], timestep=500, seed=0)
    pipeline = MultiViewPipeline(
        backbone, PixelCodec(), DIFFUSION, num_views=4, device="cpu", domain="co3d"
    )
    refs = batch.ref_mask[0]
    K, w2c = batch.intrinsics[0], batch.world_to_camera[0]
    images = (batch.images[0] + 1) / 2
    size = tuple(images.shape[-2:])
    refs_set = CameraSet.from_pixel(K[refs], w2c[refs], size)
    targets_set = CameraSet.from_pixel(K[~refs], w2c[~refs], size)
    pipeline(
        images[refs],
        refs_set,
        targets_set,
        num_inference_steps=1,
        guidance_scale=2.0,
        depths=reference_depth(batch, 0),  # as validation's `sampled_views` passes it
    )
    validation, diagnose, sampling = backbone.conds[0], backbone.conds[1], backbone.conds[2]
    sampling = ViewConditioning(  # the conditional branch of the guided pair
        sampling.intrinsics[:1],
        sampling.world_to_camera[:1],
        sampling.ref_mask[:1],
        sampling.image_size,
        ref_images=sampling.ref_images[:1],
        point_map=sampling.point_map[:1],
        point_valid=sampling.point_valid[:1],
        domain=sampling.domain[:1],
    )
    for cond in (validation, diagnose, sampling):
        assert cond.image_size == train.image_size
        for name in ("intrinsics", "world_to_camera", "ref_mask", "ref_images", "domain"):
            assert torch.equal(getattr(cond, name), getattr(train, name)), name
    for cond in (validation, diagnose):
        assert torch.equal(cond.point_map, train.point_map)
        assert torch.equal(cond.point_valid, train.point_valid)
    # the pipeline rebuilds the references' points from their depth: the same where valid
    assert torch.equal(sampling.point_valid, train.point_valid)
    valid = train.point_valid[:, :, None].expand_as(train.point_map)
    torch.testing.assert_close(sampling.point_map[valid], train.point_map[valid])
