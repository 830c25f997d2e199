"""The sampling loop with an oracle backbone whose exact answer is known in closed form."""

from __future__ import annotations

import pytest
import torch

from cameo_cli.backbone import ViewConditioning
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


@pytest.mark.parametrize(("references", "targets"), [(1, 3), (2, 5), (3, 1)])
def test_guided_ddim_reaches_the_guided_oracle_image(references: int, targets: int) -> None:
    backbone = OracleBackbone()
    pipeline = MultiViewPipeline(backbone, PixelCodec(), DIFFUSION, num_views=4, device="cpu")
    images = torch.rand(references, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ref_K, ref_w2c = cameras(references, -1.0)
    tgt_K, tgt_w2c = cameras(targets, 0.1)
    out = pipeline(images, ref_K, ref_w2c, tgt_K, tgt_w2c, steps=8, guidance=2.0, seed=3).images
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
    first = pipeline(images, ref_K, ref_w2c, tgt_K, tgt_w2c, steps=3, guidance=1.0, seed=1)
    assert all(call[0].shape[0] == 1 for call in backbone.calls)
    assert all(not call[2].drop_camera.any() for call in backbone.calls)
    again = pipeline(images, ref_K, ref_w2c, tgt_K, tgt_w2c, steps=3, guidance=1.0, seed=1)
    assert torch.equal(first.images, again.images)


def test_too_many_references_is_a_user_error() -> None:
    pipeline = MultiViewPipeline(OracleBackbone(), PixelCodec(), DIFFUSION, 4, device="cpu")
    K, w2c = cameras(4, 0.0)
    with pytest.raises(CameoError, match="at most 3 references"):
        pipeline(torch.rand(4, 3, 8, 8), K, w2c, K[:1], w2c[:1], steps=2)


def tiny_scene(views: int) -> tuple[torch.Tensor, torch.Tensor]:
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]]).repeat(views, 1, 1)
    w2c = torch.eye(4).repeat(views, 1, 1)
    w2c[:, 0, 3] = torch.arange(views) * 0.2
    return K, w2c


def test_cat3d_in_reduced_precision_follows_fp32() -> None:
    """The autocast path (bf16 / fp16, as on a GPU) runs and stays near fp32."""
    from backbones.cat3d import Cat3D

    torch.manual_seed(0)
    backbone = Cat3D.build("tiny", in_channels=3)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    K, w2c = tiny_scene(3)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipeline = MultiViewPipeline(
            backbone, PixelCodec(), DiffusionConfig(), 3, device="cpu", dtype=dtype
        )
        results[dtype] = pipeline(images, K[:1], w2c[:1], K[1:], w2c[1:], steps=2, seed=1).images
    assert results[torch.bfloat16].dtype == torch.float32
    assert (results[torch.bfloat16] - results[torch.float32]).abs().max() < 0.05


def test_latent_pipeline_with_a_vae(tiny_vae_folder) -> None:
    """Four-channel latents through a (tiny, random) AutoencoderKL: images come back whole."""
    from backbones.cat3d import Cat3D
    from cameo_cli.codec import load_codec
    from cameo_cli.config import CodecConfig

    torch.manual_seed(0)
    codec = load_codec(CodecConfig(kind="vae", path=str(tiny_vae_folder)))
    backbone = Cat3D.build("tiny", in_channels=4, downsample=2)
    pipeline = MultiViewPipeline(backbone, codec, DiffusionConfig(), 4, device="cpu")
    K, w2c = tiny_scene(4)
    out = pipeline(torch.rand(1, 3, 32, 32), K[:1], w2c[:1], K[1:], w2c[1:], steps=2, seed=0)
    assert out.images.shape == (3, 3, 32, 32)
    assert torch.isfinite(out.images).all()
    assert 0 <= out.images.min() and out.images.max() <= 1
