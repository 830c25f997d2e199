"""Image codecs: the space diffusion runs in (VAE latents, or the pixels themselves).

`load_codec(CodecConfig)` returns an `ImageCodec` with `encode(images)` (images
`[N, 3, H, W]` in [-1, 1]) -> latents `[N, channels, H / downsample, W / downsample]` and
`decode(latents)` -> images in [-1, 1]. Codecs never take gradients.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cameo_cli.config import CodecConfig
from cameo_cli.errors import CameoError


class ImageCodec(nn.Module, ABC):
    """Maps images in [-1, 1] to the diffusion space and back."""

    channels: int
    downsample: int

    @abstractmethod
    def encode(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """`[N, 3, H, W]` in [-1, 1] -> latents; `generator` samples the posterior if any."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> `[N, 3, H, W]` images in [-1, 1] (not clamped)."""

    def latent_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The latent grid (h, w) of an image of `image_size` (H, W) pixels."""
        height, width = image_size
        if height % self.downsample or width % self.downsample:
            raise CameoError(
                f"image size {height}x{width} is not a multiple of the codec's "
                f"downsampling factor {self.downsample}"
            )
        return height // self.downsample, width // self.downsample


class PixelCodec(ImageCodec):
    """Identity codec: diffusion runs on the pixels (3 channels, no downsampling)."""

    channels = 3
    downsample = 1

    def encode(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class SpaceToDepthCodec(ImageCodec):
    """Blocks of `factor` x `factor` pixels as channels (`pixel_unshuffle`): 3 factor^2
    channels at 1 / factor of the resolution, exactly invertible. Pixel-space diffusion with
    factor^2 fewer tokens per view, for fast CPU training."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        if factor < 1:
            raise CameoError(f"codec.factor must be >= 1, got {factor}")
        self.downsample = factor
        self.channels = 3 * factor * factor

    def encode(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.downsample)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.downsample)


class VaeCodec(ImageCodec):
    """A diffusers `AutoencoderKL`, latents multiplied by `scaling_factor` (after any shift)."""

    def __init__(self, vae: nn.Module, scaling_factor: float) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = scaling_factor
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(images.to(dtype)).latent_dist
        latents = posterior.mode() if generator is None else posterior.sample(generator)
        return (latents - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        latents = latents.to(dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(latents).sample


def load_codec(config: CodecConfig) -> ImageCodec:
    """Build the codec a recipe names: "none" (pixels), "space_to_depth" (pixel blocks of
    `codec.factor`) or "vae" (a local AutoencoderKL)."""
    if config.kind == "none":
        return PixelCodec()
    if config.kind == "space_to_depth":
        return SpaceToDepthCodec(config.factor)
    if config.kind != "vae":
        raise CameoError(
            f"codec.kind must be 'vae', 'space_to_depth' or 'none', got {config.kind!r}"
        )
    if not config.path:
        raise CameoError(
            "codec.kind is 'vae' but codec.path is not set: give a local AutoencoderKL folder "
            "(e.g. --set codec.path=/models/sd21/vae) or use codec.kind=none"
        )
    folder = Path(config.path).expanduser()
    if not (folder / "config.json").is_file():
        raise CameoError(
            f"{folder}: not a local AutoencoderKL folder (no config.json); "
            "download the VAE (e.g. the 'vae' subfolder of Stable Diffusion 2.1) to that path"
        )
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise CameoError(f"{folder}: cannot load the AutoencoderKL: {error}") from error
    return VaeCodec(vae, config.scaling_factor)
