"""CAT3D's `camera_encoder: official` and `domain_embeddings` options and their recipe keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cameo.backbones.cat3d import Cat3D, OfficialCameraEncoder, official_camera_maps
from cameo.backbones.mvgenmaster import MVGenMaster
from cameo_cli.backbone import ViewConditioning
from cameo_cli.batch import ViewBatch, domain_index
from cameo_cli.camera_files import CameraSet
from cameo_cli.cameras import OFFICIAL_PIXEL_OFFSET, intrinsics_matrix
from cameo_cli.codec import PixelCodec
from cameo_cli.config import DiffusionConfig, recipe_from_dict
from cameo_cli.errors import CameoError
from cameo_cli.pipeline import MultiViewPipeline
from cameo_cli.train.setup import build_training_backbone
from tests.stubs import StubBackbone
from tests.test_backbones_unet import orbit_cameras

PIXELS, LATENT = 64, 8  # a 4-channel latent model with downsample 8: 8x8 latents of 64 px


def make_cond(batch: int, views: int, domain: list[int] | None = None) -> ViewConditioning:
    f, c = torch.tensor(PIXELS * 1.2), torch.tensor(PIXELS / 2)
    K = intrinsics_matrix(f, f, c, c).expand(batch, views, 3, 3).clone()
    ref_mask = torch.zeros(batch, views, dtype=torch.bool)
    ref_mask[:, 0] = True
    cond = ViewConditioning(K, orbit_cameras(batch, views), ref_mask, (PIXELS, PIXELS))
    if domain is not None:
        cond.domain = torch.tensor(domain)
    return cond


def build(cls: type[Cat3D] = Cat3D, **options: object) -> Cat3D:
    torch.manual_seed(0)
    return cls.build("tiny", in_channels=4, **options).eval()


def inputs(batch: int, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, views, 4, LATENT, LATENT, generator=generator)
    return latents, torch.rand(batch, generator=generator) * 999


def bare_unet(model: Cat3D, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The wrapped U-Net alone (no camera, no domain) on the same views."""
    views = latents.shape[1]
    model.set_num_views(views)
    out = model.model(latents.flatten(0, 1), timesteps.repeat_interleave(views), None).sample
    return out.unflatten(0, latents.shape[:2])


def randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(std=0.05)


def test_official_encoder_layers_on_the_full_sd21_config():
    with torch.device("meta"):
        model = Cat3D.build("full", camera_encoder="official", domain_embeddings=3)
    encoder = model.camera_encoder
    assert model.condition_encoder is None and isinstance(encoder, OfficialCameraEncoder)
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in encoder.modules() if isinstance(m, nn.GroupNorm)]
    widths = [convs[0].in_channels] + [conv.out_channels for conv in convs]
    assert widths == [7, 32, 64, 128, 256, 320]
    assert [conv.stride for conv in convs] == [(1, 1), (2, 2), (2, 2), (2, 2), (1, 1)]
    assert {(conv.kernel_size, conv.padding) for conv in convs} == {((3, 3), (1, 1))}
    assert [(n.num_groups, n.num_channels, n.eps) for n in norms] == [
        (8, 32, 1e-6),
        (16, 64, 1e-6),
        (32, 128, 1e-6),
        (64, 256, 1e-6),
    ]
    assert sum(isinstance(m, nn.SiLU) for m in encoder.modules()) == 4
    assert tuple(model.domain_embedding.weight.shape) == (3, 1280)  # SD2.1's time_embed_dim


def test_downsample_sets_the_stride_stages():
    assert len(OfficialCameraEncoder(32, 1).stages) == 1  # pixel space: the 7->32 conv only
    assert len(OfficialCameraEncoder(32, 4).stages) == 3
    with pytest.raises(CameoError, match="power of two"):
        OfficialCameraEncoder(32, 6)


def test_official_maps_are_target_mask_then_raymap_on_the_official_grid():
    cond = make_cond(1, 3)
    cond.world_to_camera = torch.eye(4).repeat(1, 3, 1, 1)
    cond.drop_camera = torch.tensor([False])
    maps = official_camera_maps(cond, PIXELS, PIXELS)
    assert maps.shape == (1, 3, 7, PIXELS, PIXELS)
    assert maps[0, :, 0, 0, 0].tolist() == [0.0, 1.0, 1.0]  # 1 = view to generate
    # Identity cameras: the direction at (row r, col c) is K^-1 (c - 0.5, r + 0.5, 1).
    du, dv = OFFICIAL_PIXEL_OFFSET
    r, c = 5, 9
    ray = torch.linalg.inv(cond.intrinsics[0, 0]) @ torch.tensor([c + du, r + dv, 1.0])
    torch.testing.assert_close(maps[0, 0, 1:4, r, c], ray / ray.norm())
    cond.drop_camera = torch.tensor([True])
    dropped = official_camera_maps(cond, PIXELS, PIXELS)
    assert dropped[:, :, 1:].abs().max() == 0 and torch.equal(dropped[:, :, 0], maps[:, :, 0])


@pytest.mark.parametrize("cls", [Cat3D, MVGenMaster], ids=["cat3d", "mvgenmaster"])
def test_zero_at_init_then_wired_in(cls):
    model = build(cls, camera_encoder="official", domain_embeddings=3)
    assert model.downsample == 8
    latents, timesteps = inputs(2, 3)
    cond = make_cond(2, 3, domain=[0, 2])
    seen = []
    model.camera_encoder.register_forward_hook(lambda _m, args, out: seen.append((args, out)))
    with torch.no_grad():
        ours = model(latents, timesteps, cond)
        assert torch.equal(ours, bare_unet(model, latents, timesteps))
        (maps,), added = seen[0]
        assert maps.shape == (6, 7, PIXELS, PIXELS)  # pixel resolution
        assert added.shape == (6, model.model.conv_in.out_channels, LATENT, LATENT)
        assert added.abs().max() == 0
        randomize(model.camera_encoder)
        assert (model(latents, timesteps, cond) - ours).abs().max() > 1e-4


def test_domain_embedding_changes_the_output_per_sample():
    model = build(domain_embeddings=3)
    latents, timesteps = inputs(2, 3)
    with torch.no_grad():
        before = model(latents, timesteps, make_cond(2, 3, domain=[0, 1]))
        randomize(model.domain_embedding)
        after = model(latents, timesteps, make_cond(2, 3, domain=[0, 1]))
        assert (after - before).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-4
        other = model(latents, timesteps, make_cond(2, 3, domain=[0, 2]))
        assert torch.equal(other[0], after[0]) and not torch.equal(other[1], after[1])
    with pytest.raises(ValueError, match="cond.domain is required"):
        model(latents, timesteps, make_cond(2, 3))
    with pytest.raises(ValueError, match="outside 0-2"):
        model(latents, timesteps, make_cond(2, 3, domain=[0, 3]))


def test_domain_is_ignored_without_domain_embeddings():
    model = build()
    assert model.domain_embedding is None and model.camera_encoder is None
    latents, timesteps = inputs(2, 3)
    with torch.no_grad():
        plain = model(latents, timesteps, make_cond(2, 3))
        assert torch.equal(model(latents, timesteps, make_cond(2, 3, domain=[1, 2])), plain)


@pytest.mark.slow
def test_save_and_load_keep_encoder_and_domain_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build(camera_encoder="official", domain_embeddings=3)
    randomize(model.camera_encoder)
    randomize(model.domain_embedding)
    model.save_pretrained(tmp_path / "saved")
    loaded = Cat3D.from_pretrained(tmp_path / "saved").eval()
    assert loaded.options == model.options
    assert loaded.options["camera_encoder"] == "official"
    for name in ("camera_encoder", "domain_embedding"):
        ours, theirs = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    latents, timesteps = inputs(1, 3)
    cond = make_cond(1, 3, domain=[0])
    with torch.no_grad():
        assert torch.equal(loaded(latents, timesteps, cond), model(latents, timesteps, cond))


def test_bad_option_values_are_user_errors():
    with pytest.raises(CameoError, match="camera_encoder must be one of"):
        build(camera_encoder="pixel")
    with pytest.raises(CameoError, match="domain_embeddings must be >= 0"):
        build(domain_embeddings=-1)


def recipe(backbone: dict, data: dict | None = None):
    return recipe_from_dict(
        {"backbone": {"name": "cat3d", "variant": "tiny", **backbone}, "data": data or {}}
    )


def test_recipe_keys_reach_the_backbone():
    torch.manual_seed(0)
    model = build_training_backbone(
        recipe({"options": {"camera_encoder": "official", "domain_embeddings": 3}}), in_channels=4
    )
    assert isinstance(model.camera_encoder, OfficialCameraEncoder)
    assert model.domain_embedding.num_embeddings == 3
    default = build_training_backbone(recipe({}), in_channels=4)
    assert default.options["camera_encoder"] == "conv" and default.domain_embedding is None
    assert recipe({}).data.domain == "others"
    with pytest.raises(CameoError, match="expected one of official, conv"):
        recipe({"options": {"camera_encoder": "pixel"}})
    with pytest.raises(CameoError, match="expected one of re10k, co3d, others"):
        recipe({}, {"domain": "dtu"})


def test_undeclared_option_is_the_unknown_options_error():
    from cameo.backbones.hunyuan_dit import HunyuanDiT

    with pytest.raises(CameoError, match="unknown options"):
        HunyuanDiT.resolve_options("tiny", 4, {"camera_encoder": "official"})


def test_batch_domain_reaches_the_conditioning():
    assert [domain_index(name) for name in ("re10k", "co3d", "others")] == [0, 1, 2]
    with pytest.raises(CameoError, match="unknown domain"):
        domain_index("dtu")
    batch = ViewBatch(
        images=torch.zeros(2, 3, 3, 8, 8),
        intrinsics=torch.eye(3).repeat(2, 3, 1, 1),
        world_to_camera=torch.eye(4).repeat(2, 3, 1, 1),
        ref_mask=torch.tensor([[True, False, False]] * 2),
        scenes=["a", "b"],
        frames=torch.zeros(2, 3, dtype=torch.long),
    ).with_domain("co3d")
    assert batch.domain.tolist() == [1, 1]
    assert ViewConditioning.from_batch(batch).domain.tolist() == [1, 1]


def test_pipeline_gives_the_recipe_domain_to_every_call():
    backbone = StubBackbone()
    pipeline = MultiViewPipeline(
        backbone, PixelCodec(), DiffusionConfig(), num_views=3, device="cpu", domain="re10k"
    )
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]).repeat(2, 1, 1)
    w2c = torch.eye(4).repeat(2, 1, 1)
    refs = CameraSet.from_pixel(K[:1], w2c[:1], (16, 16))
    targets = CameraSet.from_pixel(K, w2c, (16, 16))
    pipeline(
        torch.rand(1, 3, 16, 16), refs, targets, num_inference_steps=2, output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert backbone.conds and all(cond.domain.tolist() == [0, 0] for cond in backbone.conds)
