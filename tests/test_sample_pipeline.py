"""The sampling loop with an oracle backbone whose exact answer is known in closed form."""

from __future__ import annotations

import pytest
import torch

from cameo_cli.backbone import ViewConditioning
from cameo_cli.camera_files import CameraSet
from cameo_cli.codec import PixelCodec
from cameo_cli.config import DiffusionConfig
from cameo_cli.diffusion import make_sampler
from cameo_cli.errors import CameoError
from cameo_cli.pipeline import MultiViewPipeline
from tests.stubs import StubBackbone

DIFFUSION = DiffusionConfig(
    prediction="v_prediction", zero_terminal_snr=True, timestep_spacing="trailing"
)


class OracleBackbone(StubBackbone):
    """Predicts v for a known clean image per view: 0.4 * tanh(camera x translation) with
    cameras, 0 without; records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.alphas_cumprod = make_sampler(DIFFUSION).alphas_cumprod
        self.calls: list[tuple[torch.Tensor, torch.Tensor, ViewConditioning]] = []

    def predict(self, latents, timesteps, cond):
        self.calls.append((latents.clone(), timesteps.clone(), cond))
        alpha_bar = self.alphas_cumprod[timesteps.long()].view(-1, 1, 1, 1, 1)
        clean = 0.4 * torch.tanh(cond.world_to_camera[:, :, 0, 3]).view(*latents.shape[:2], 1, 1, 1)
        clean = torch.where(cond.drop_camera.view(-1, 1, 1, 1, 1), 0.0, clean).expand_as(latents)
        noise = (latents - alpha_bar.sqrt() * clean) / (1 - alpha_bar).sqrt()
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * clean


def cameras(count: int, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    w2c = torch.eye(4).repeat(count, 1, 1)
    w2c[:, 0, 3] = offset + torch.arange(count) * 0.25
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]).repeat(count, 1, 1)
    return K, w2c


def camera_set(K: torch.Tensor, w2c: torch.Tensor, size: int = 16) -> CameraSet:
    return CameraSet.from_pixel(K, w2c, (size, size))


def run(pipeline, images, ref, target, size=16, **options):
    """The pipeline on pixel-K tensors (ref and target: (K, w2c)), images as a tensor."""
    options.setdefault("output_type", "pt")
    return pipeline(images, camera_set(*ref, size), camera_set(*target, size), **options).images


@pytest.mark.parametrize(("references", "targets"), [(1, 3), (2, 5), (3, 1)])
def test_guided_ddim_reaches_the_guided_oracle_image(references: int, targets: int) -> None:
    backbone = OracleBackbone()
    pipeline = MultiViewPipeline(backbone, PixelCodec(), DIFFUSION, num_views=4, device="cpu")
    images = torch.rand(references, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ref_K, ref_w2c = cameras(references, -1.0)
    tgt_K, tgt_w2c = cameras(targets, 0.1)
    out = run(
        pipeline,
        images,
        (ref_K, ref_w2c),
        (tgt_K, tgt_w2c),
        num_inference_steps=8,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(3),
    )
    assert out.shape == (targets, 3, 16, 16)
    # CFG: unconditional 0, conditional c -> 0 + 2 (c - 0); DDIM ends exactly on it.
    expected = (2 * 0.4 * torch.tanh(tgt_w2c[:, 0, 3]) + 1) / 2
    torch.testing.assert_close(out, expected.view(-1, 1, 1, 1).expand_as(out), atol=1e-4, rtol=0)

    slots = 4 - references
    groups = -(-targets // slots)
    assert len(backbone.calls) == groups * 8
    clean = images * 2 - 1
    for latents, timesteps, cond in backbone.calls:
        assert latents.shape == (2, 4, 3, 16, 16)
        assert torch.equal(latents[:, :references], clean[None].expand(2, -1, -1, -1, -1))
        assert cond.drop_camera.tolist() == [False, True]
        assert cond.ref_mask[0].tolist() == [True] * references + [False] * slots
        assert timesteps[0] == timesteps[1]
        assert torch.equal(cond.ref_images[0, :references], clean)
        assert not cond.ref_images[0, references:].any()
    assert backbone.calls[0][1][0] == 999  # zero terminal SNR: trailing timesteps


def test_no_guidance_runs_one_branch_and_seeds_reproduce() -> None:
    backbone = OracleBackbone()
    pipeline = MultiViewPipeline(backbone, PixelCodec(), DIFFUSION, num_views=3, device="cpu")
    images = torch.rand(1, 3, 8, 8)
    ref_K, ref_w2c = cameras(1, 0.0)
    tgt_K, tgt_w2c = cameras(2, 0.5)
    options = {"num_inference_steps": 3, "guidance_scale": 1.0, "size": 8}

    def sample() -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        return run(
            pipeline, images, (ref_K, ref_w2c), (tgt_K, tgt_w2c), **options, generator=generator
        )

    first = sample()
    assert all(call[0].shape[0] == 1 for call in backbone.calls)
    assert all(not call[2].drop_camera.any() for call in backbone.calls)
    again = sample()
    assert torch.equal(first, again)


def test_too_many_references_is_a_user_error() -> None:
    pipeline = MultiViewPipeline(OracleBackbone(), PixelCodec(), DIFFUSION, 4, device="cpu")
    K, w2c = cameras(4, 0.0)
    with pytest.raises(CameoError, match="at most 3 references"):
        run(pipeline, torch.rand(4, 3, 8, 8), (K, w2c), (K[:1], w2c[:1]), size=8)


def tiny_scene(views: int) -> tuple[torch.Tensor, torch.Tensor]:
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]]).repeat(views, 1, 1)
    w2c = torch.eye(4).repeat(views, 1, 1)
    w2c[:, 0, 3] = torch.arange(views) * 0.2
    return K, w2c


def test_cat3d_in_reduced_precision_follows_fp32() -> None:
    """The autocast path (bf16 / fp16, as on a GPU) runs and stays near fp32."""
    from cameo.backbones.cat3d import Cat3D

    torch.manual_seed(0)
    backbone = Cat3D.build("tiny", in_channels=3)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    K, w2c = tiny_scene(3)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipeline = MultiViewPipeline(
            backbone, PixelCodec(), DiffusionConfig(), 3, device="cpu", dtype=dtype
        )
        results[dtype] = run(
            pipeline,
            images,
            (K[:1], w2c[:1]),
            (K[1:], w2c[1:]),
            size=32,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(1),
        )
    assert results[torch.bfloat16].dtype == torch.float32
    assert (results[torch.bfloat16] - results[torch.float32]).abs().max() < 0.05


def test_latent_pipeline_with_a_vae(tiny_vae_folder) -> None:
    """Four-channel latents through a (tiny, random) AutoencoderKL: images come back whole."""
    from cameo.backbones.cat3d import Cat3D
    from cameo_cli.codec import load_codec
    from cameo_cli.config import CodecConfig

    torch.manual_seed(0)
    codec = load_codec(CodecConfig(kind="vae", path=str(tiny_vae_folder)))
    backbone = Cat3D.build("tiny", in_channels=4, downsample=2)
    pipeline = MultiViewPipeline(backbone, codec, DiffusionConfig(), 4, device="cpu")
    K, w2c = tiny_scene(4)
    out = run(
        pipeline,
        torch.rand(1, 3, 32, 32),
        (K[:1], w2c[:1]),
        (K[1:], w2c[1:]),
        size=32,
        num_inference_steps=2,
    )
    assert out.shape == (3, 3, 32, 32)
    assert torch.isfinite(out).all()
    assert 0 <= out.min() and out.max() <= 1


# -- the diffusers-shaped API -----------------------------------------------------------------


def _oracle_pipeline(**options) -> MultiViewPipeline:
    return MultiViewPipeline(OracleBackbone(), PixelCodec(), DIFFUSION, 4, device="cpu", **options)


def test_pil_and_tensor_inputs_give_the_same_images() -> None:
    from PIL import Image

    pipeline = _oracle_pipeline()
    pixels = torch.randint(0, 256, (2, 16, 16, 3), generator=torch.Generator().manual_seed(0))
    pictures = [Image.fromarray(p.to(torch.uint8).numpy()) for p in pixels]
    tensor = pixels.permute(0, 3, 1, 2).float() / 255
    refs, targets = camera_set(*cameras(2, -1.0)), camera_set(*cameras(3, 0.1))
    outputs = {}
    for name, images in (("pil", pictures), ("tensor", tensor), ("list", list(tensor))):
        outputs[name] = pipeline(
            images,
            refs,
            targets,
            num_inference_steps=3,
            generator=torch.Generator().manual_seed(5),
            output_type="pt",
        ).images
    assert torch.equal(outputs["pil"], outputs["tensor"])
    assert torch.equal(outputs["pil"], outputs["list"])


def test_output_types() -> None:
    pipeline = _oracle_pipeline()
    refs, targets = camera_set(*cameras(1, -1.0)), camera_set(*cameras(2, 0.1))
    images = torch.rand(1, 3, 16, 16)
    out = {
        kind: pipeline(
            images,
            refs,
            targets,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type=kind,
        ).images
        for kind in ("pil", "np", "pt")
    }
    assert out["pt"].shape == (2, 3, 16, 16)
    assert out["np"].shape == (2, 16, 16, 3)
    assert [image.size for image in out["pil"]] == [(16, 16), (16, 16)]
    torch.testing.assert_close(torch.from_numpy(out["np"]).permute(0, 3, 1, 2), out["pt"])
    with pytest.raises(CameoError, match="output_type"):
        pipeline(images, refs, targets, output_type="latent")


@pytest.mark.parametrize("scheduler", ["ddim", "dpm-solver++", "unipc"])
def test_every_scheduler_reaches_the_oracle_image(scheduler: str) -> None:
    """The oracle's clean image is the exact answer at any step count for every sampler."""
    pipeline = _oracle_pipeline(scheduler=scheduler)
    refs, (tgt_K, tgt_w2c) = camera_set(*cameras(1, -1.0)), cameras(3, 0.1)
    out = pipeline(
        torch.rand(1, 3, 16, 16),
        refs,
        camera_set(tgt_K, tgt_w2c),
        num_inference_steps=8,  # DDIM's last trailing step (t = 124) reaches alpha = 1
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    expected = (0.4 * torch.tanh(tgt_w2c[:, 0, 3]) + 1) / 2
    torch.testing.assert_close(out, expected.view(-1, 1, 1, 1).expand_as(out), atol=1e-3, rtol=0)


def test_use_scheduler_swaps_the_sampler_with_the_same_betas() -> None:
    pipeline = _oracle_pipeline()
    before = pipeline.scheduler.alphas_cumprod.clone()
    pipeline.use_scheduler("unipc")
    assert type(pipeline.scheduler).__name__ == "UniPCMultistepScheduler"
    torch.testing.assert_close(pipeline.scheduler.alphas_cumprod[:-1], before[:-1])
    with pytest.raises(CameoError, match="unknown scheduler 'euler'"):
        pipeline.use_scheduler("euler")
    with pytest.raises(CameoError, match="only the ddim scheduler takes eta"):
        pipeline(torch.rand(1, 3, 16, 16), *(camera_set(*cameras(1, 0.0)),) * 2, eta=0.5)


def test_callback_sees_every_step_and_can_replace_the_latents() -> None:
    pipeline = _oracle_pipeline()
    seen: list[tuple[int, int]] = []

    def callback(pipe, index, timestep, tensors):
        assert pipe is pipeline and tensors["latents"].shape == (3, 3, 16, 16)
        seen.append((index, int(timestep)))
        return tensors

    refs, targets = camera_set(*cameras(1, -1.0)), camera_set(*cameras(4, 0.1))
    pipeline(
        torch.rand(1, 3, 16, 16),
        refs,
        targets,
        num_inference_steps=4,
        callback_on_step_end=callback,
    )
    timesteps = pipeline.scheduler.timesteps.tolist()
    assert seen == [(i, t) for i, t in enumerate(timesteps)] * 2  # two groups of 3 targets

    out = pipeline(
        torch.rand(1, 3, 16, 16),
        refs,
        targets,
        num_inference_steps=2,
        output_type="pt",
        callback_on_step_end=lambda pipe, i, t, tensors: {"latents": tensors["latents"] * 0 + 1},
    ).images
    assert torch.equal(out, torch.ones_like(out))


def test_old_argument_names_are_clear_errors() -> None:
    pipeline = _oracle_pipeline()
    images = torch.rand(1, 3, 16, 16)
    refs, targets = camera_set(*cameras(1, 0.0)), camera_set(*cameras(1, 0.5))
    for old, new in (
        ("steps", "num_inference_steps"),
        ("guidance", "guidance_scale"),
        ("seed", "generator"),
        ("progress", "callback_on_step_end"),
    ):
        with pytest.raises(CameoError, match=f"'{old}' is now {new}"):
            pipeline(images, refs, targets, **{old: 1})
    K, w2c = cameras(1, 0.0)
    with pytest.raises(CameoError, match="give the cameras as CameraSets"):
        pipeline(images, K, w2c)


def test_resolution_resizes_and_crops_images_and_cameras() -> None:
    """A 24 x 16 image at resolution 16 samples as its 16 x 16 centre with cropped K."""
    pipeline = _oracle_pipeline(resolution=16)
    K, w2c = cameras(1, 0.0)
    wide = CameraSet.from_pixel(K, w2c, (16, 24))
    views = pipeline.prepare(torch.rand(3, 16, 24), wide, wide)
    assert views.images.shape == (1, 3, 16, 16)
    assert views.reference_intrinsics[0, 0, 2] == pytest.approx(8 - 4)  # cx 8 less 4 cropped


# -- the references' depth (geometric priors) ----------------------------------------------
def _prior_pipeline(cls_name: str) -> MultiViewPipeline:
    from cameo.backbones.cat3d import Cat3D
    from cameo.backbones.mvgenmaster import MVGenMaster

    torch.manual_seed(0)
    backbone = {"cat3d": Cat3D, "mvgenmaster": MVGenMaster}[cls_name].build("tiny", in_channels=3)
    with torch.no_grad():  # a trained encoder: priors change the prediction
        for parameter in backbone.condition_encoder.parameters():
            parameter.normal_(std=0.05)
    return MultiViewPipeline(backbone, PixelCodec(), DiffusionConfig(), 3, device="cpu")


def _recorded_conds(pipeline: MultiViewPipeline) -> list[ViewConditioning]:
    conds: list[ViewConditioning] = []
    pipeline.backbone.register_forward_pre_hook(lambda _module, args: conds.append(args[2]))
    return conds


def _sample(pipeline, depths=None):
    K, w2c = tiny_scene(3)
    return run(
        pipeline,
        torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        (K[:1], w2c[:1]),
        (K[1:], w2c[1:]),
        size=32,
        num_inference_steps=1,
        generator=torch.Generator().manual_seed(1),
        depths=depths,
    )


def test_reference_depth_gives_mvgenmaster_its_priors(caplog) -> None:
    """Depth 2 everywhere: the reference's point map is its pixel rays at z = 2 (targets
    blank), and the targets get warped priors (not zero)."""
    from cameo_cli.cameras import unproject_depth

    pipeline = _prior_pipeline("mvgenmaster")
    conds = _recorded_conds(pipeline)
    depth = torch.full((1, 32, 32), 2.0)
    with caplog.at_level("WARNING"):
        _sample(pipeline, depths=depth)
    assert "zero priors" not in caplog.text
    cond = conds[0]
    K, w2c = tiny_scene(3)
    expected = unproject_depth(depth[0], K[0], w2c[0])
    torch.testing.assert_close(cond.point_map[0, 0], expected)
    assert cond.point_valid[:, 0].all() and not cond.point_valid[:, 1:].any()
    assert not cond.point_map[:, 1:].any()
    latents = torch.zeros(2, 3, 3, 32, 32)
    position = pipeline.backbone.position_prior(latents, cond)
    colour = pipeline.backbone.colour_prior(cond)
    assert position[:, 1:, -1].any() and colour[:, 1:, 3].any()  # the targets see the reference


def test_mvgenmaster_without_depth_warns_once(caplog) -> None:
    pipeline = _prior_pipeline("mvgenmaster")
    with caplog.at_level("WARNING"):
        _sample(pipeline)
        _sample(pipeline)
    warnings = [r for r in caplog.records if "zero priors" in r.getMessage()]
    assert len(warnings) == 1 and "mvgenmaster" in warnings[0].getMessage()


def test_reference_depth_leaves_cat3d_unchanged(caplog) -> None:
    pipeline = _prior_pipeline("cat3d")
    with caplog.at_level("WARNING"):
        plain = _sample(pipeline)
    assert "zero priors" not in caplog.text  # CAT3D uses no priors
    assert torch.equal(_sample(pipeline, depths=torch.full((1, 32, 32), 2.0)), plain)
    mvgenmaster = _prior_pipeline("mvgenmaster")
    assert not torch.equal(
        _sample(mvgenmaster, depths=torch.full((1, 32, 32), 2.0)), _sample(mvgenmaster)
    )


def test_depth_is_resized_and_cropped_like_its_image() -> None:
    """A 16 x 24 depth at resolution 16 keeps its centre 16 columns; nearest, unblended."""
    pipeline = _oracle_pipeline(resolution=16)
    K, w2c = cameras(1, 0.0)
    wide = CameraSet.from_pixel(K, w2c, (16, 24))
    depth = torch.arange(24.0).expand(16, 24) + 1
    views = pipeline.prepare(torch.rand(3, 16, 24), wide, wide, depths=[depth.numpy()])
    assert torch.equal(views.reference_depth[0], depth[:, 4:20])
    with pytest.raises(CameoError, match=r"depth map 0 is \[16, 16\], its image is 16x24"):
        pipeline.prepare(torch.rand(3, 16, 24), wide, wide, depths=[torch.ones(16, 16)])
    with pytest.raises(CameoError, match="1 reference images need 1 depth maps, got 2"):
        pipeline.prepare(torch.rand(3, 16, 24), wide, wide, depths=torch.ones(2, 16, 24))
