"""Codecs: pixel identity, and a tiny random AutoencoderKL loaded from a local folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from cameo_cli.codec import load_codec
from cameo_cli.config import CodecConfig
from cameo_cli.errors import CameoError


def test_pixel_codec_is_the_identity() -> None:
    codec = load_codec(CodecConfig(kind="none"))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert codec.channels == 3 and codec.downsample == 1
    assert torch.equal(codec.decode(codec.encode(images)), images)
    assert codec.latent_size((32, 48)) == (32, 48)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_space_to_depth_codec_moves_pixel_blocks_into_channels(factor: int) -> None:
    codec = load_codec(CodecConfig(kind="space_to_depth", factor=factor))
    assert (codec.channels, codec.downsample) == (3 * factor**2, factor)
    images = torch.rand(2, 3, 8, 16) * 2 - 1
    latents = codec.encode(images)
    assert latents.shape == (2, 3 * factor**2, 8 // factor, 16 // factor)
    # cell (y, x), channel c * f^2 + dy * f + dx holds pixel (y f + dy, x f + dx) of channel c
    dy, dx = factor - 1, 0
    channel = 2 * factor**2 + dy * factor + dx
    torch.testing.assert_close(latents[:, channel], images[:, 2, dy::factor, dx::factor])
    assert torch.equal(codec.decode(latents), images)
    assert codec.latent_size((8, 16)) == (8 // factor, 16 // factor)


def test_backbone_downsample_follows_the_space_to_depth_codec() -> None:
    from cameo.backbones.cat3d import Cat3D

    for factor in (1, 2, 4):
        settings = Cat3D.resolve_options("tiny", 3 * factor**2, {})
        assert settings["downsample"] == factor
    assert Cat3D.resolve_options("tiny", 4, {})["downsample"] == 8


def test_vae_codec_scales_the_autoencoder(tiny_vae_folder: Path) -> None:
    codec = load_codec(CodecConfig(kind="vae", path=str(tiny_vae_folder), scaling_factor=0.5))
    reference = AutoencoderKL.from_pretrained(tiny_vae_folder, local_files_only=True)
    assert codec.channels == 4 and codec.downsample == 2
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = codec.encode(images)
    assert latents.shape == (2, 4, 16, 16)
    with torch.no_grad():
        mean = reference.encode(images).latent_dist.mode()
        torch.testing.assert_close(latents, mean * 0.5)
        torch.testing.assert_close(codec.decode(latents), reference.decode(mean).sample)
    sampled = codec.encode(images, generator=torch.Generator().manual_seed(0))
    again = codec.encode(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, again) and not torch.equal(sampled, latents)
    assert codec.latent_size((32, 64)) == (16, 32)
    with pytest.raises(CameoError, match="multiple"):
        codec.latent_size((31, 32))


def test_vae_codec_errors(tmp_path: Path) -> None:
    with pytest.raises(CameoError, match="codec.path is not set"):
        load_codec(CodecConfig(kind="vae"))
    with pytest.raises(CameoError, match=f"{tmp_path / 'missing'}: not a local AutoencoderKL"):
        load_codec(CodecConfig(kind="vae", path=str(tmp_path / "missing")))
    with pytest.raises(CameoError, match="codec.kind"):
        load_codec(CodecConfig(kind="gan"))
