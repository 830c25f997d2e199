"""CAT3D: an SD2.1-shaped U-Net with 3D self-attention and Plücker-raymap camera input.

- The text cross-attention (`attn2`) of every transformer block is removed; the 16 `attn1`
  layers, in sorted module-name order (= execution order once `attn2` is gone), are the
  hook locations. Layer 10 is `up_blocks.2.attentions.0.transformer_blocks.0.attn1`.
- Layers at the first block width (320 channels in SD2.1, the highest resolution) attend
  per view; all others attend across the F views of a sample (3D attention). Both are
  declared by the spec (`backbones/__init__.py`), which the hooks follow.
- Camera input (option `camera_encoder`), added to `conv_in`'s output; zero at
  initialisation either way, so the model then predicts exactly what the wrapped U-Net does:
  - `conv` (default): the 6-channel Plücker raymap (relative to view 0, see
    `cameo_cli.cameras.plucker_raymap`) and a 1-channel reference mask at the latent
    resolution through a zero-initialised conv with `conv_in`'s kernel (= widening
    `conv_in` with zero weights).
  - `official`: the official code's `ExConvEncoder` (`OfficialCameraEncoder`) on a
    1-channel target mask and the raymap at PIXEL resolution, on the official pixel grid.
- Option `domain_embeddings` N > 0: N zero-initialised embeddings (the official "domain
  switch", `data.domain`) added to the time embedding; each sample picks one by
  `cond.domain`.
- Optional q/k LayerNorm on every `attn1` (option `qk_norm`, default on as in the official
  code). It is new, so a pretrained U-Net *with* q/k norm is not the pretrained U-Net; the
  zero-init property holds relative to the U-Net including those norms.
- Every view of a sample gets the sample's timestep.

diffusers does not record the removed `attn2`, the q/k norms or the processors, so
`_load_model` and `_wrap` apply all three after every load (and `save_pretrained` stores the
norms with cameo's extra weights).
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from cameo.backbones import CAT3D
from cameo_cli.attention import add_qk_norm, install_processors
from cameo_cli.backbone import MultiViewBackbone, ViewConditioning, load_diffusers_model
from cameo_cli.cameras import OFFICIAL_PIXEL_OFFSET
from cameo_cli.conditioning import (
    CAMERA_CONDITION_CHANNELS,
    added_to_output,
    camera_condition_maps,
    zero_conv,
)
from cameo_cli.errors import CameoError

# Stable Diffusion 2.1's U-Net. `attention_head_dim` is the NUMBER of heads in diffusers.
SD21_UNET = dict(
    sample_size=96,
    block_out_channels=(320, 640, 1280, 1280),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    layers_per_block=2,
    use_linear_projection=True,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
# The same topology (all 16 attn1 layers) at 3.2 M parameters for CPU tests.
TINY_UNET = dict(SD21_UNET, sample_size=32, block_out_channels=(32, 64, 64, 64))
TINY_UNET["attention_head_dim"] = (2, 4, 4, 4)
TINY_UNET["cross_attention_dim"] = 32
UNET_CONFIGS = {"tiny": TINY_UNET, "full": SD21_UNET}

_BLOCK_PATH = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^mid_block\.")


def remove_cross_attention(unet: nn.Module) -> None:
    """Drop the text cross-attention (`attn2`, `norm2`) of every transformer block."""
    for module in unet.modules():
        if getattr(module, "attn2", None) is not None:
            module.attn2 = None
            module.norm2 = None


def _conv_norm_silu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 conv (padding 1), GroupNorm with out_channels / 4 groups (eps 1e-6), SiLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.GroupNorm(out_channels // 4, out_channels, eps=1e-6),
        nn.SiLU(),
    )


class OfficialCameraEncoder(nn.Module):
    """The official CAMEO camera encoder (`src/modules/extra_encoder.py::ExConvEncoder`).

    Pixel-resolution maps [N, in_channels (7), H, W] -> [N, out_channels, H / downsample,
    W / downsample]: conv in_channels->32 (GroupNorm 8, SiLU), then one stride-2 conv per
    halving (widths doubling, GroupNorm width / 4, SiLU), then a zero-initialised 3x3 conv to
    `out_channels`. With `downsample` 8 (SD latents) this is exactly the official
    32->64->128->256 stack; other powers of two get log2(downsample) stages (pixel-space
    models, downsample 1: none). MVGenMaster encodes its pixel-resolution colour prior with
    the same stack (`in_channels` 4).
    """

    def __init__(
        self, out_channels: int, downsample: int, in_channels: int = CAMERA_CONDITION_CHANNELS
    ) -> None:
        super().__init__()
        stages = downsample.bit_length() - 1
        if downsample < 1 or 2**stages != downsample:
            raise CameoError(
                f"camera_encoder 'official' halves the image per stage: downsample must be a "
                f"power of two, got {downsample}"
            )
        width = 32
        layers = [_conv_norm_silu(in_channels, width, stride=1)]
        for _ in range(stages):
            layers.append(_conv_norm_silu(width, 2 * width, stride=2))
            width *= 2
        self.stages = nn.Sequential(*layers)
        self.out = zero_conv(width, out_channels, 3, padding=1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.out(self.stages(maps))


def official_camera_maps(cond: ViewConditioning, height: int, width: int) -> torch.Tensor:
    """[B, F, 7, height, width]: the official encoder's input, a target mask (1 = view to
    generate) then the Plücker raymap (zero where `cond.drop_camera`) on the official grid."""
    maps = camera_condition_maps(cond, height, width, pixel_offset=OFFICIAL_PIXEL_OFFSET)
    return torch.cat([1 - maps[:, :, -1:], maps[:, :, :-1]], dim=2)


class Cat3D(MultiViewBackbone):
    """CAT3D multi-view U-Net (see the module docstring)."""

    spec = CAT3D
    model_class = UNet2DConditionModel
    pretrained_subfolder = "unet"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        *,
        qk_norm: bool,
        downsample: int,
        camera_encoder: str,
        domain_embeddings: int,
    ) -> None:
        super().__init__()
        if domain_embeddings < 0:
            raise CameoError(
                f"backbone '{self.name}': domain_embeddings must be >= 0, got {domain_embeddings}"
            )
        remove_cross_attention(unet)
        self.model = unet
        self.hooks = self.spec_hooks(unet)
        self._added = add_qk_norm(unet, self.hooks) if qk_norm else []
        install_processors(unet, self.hooks)
        self.downsample = downsample
        self.camera_encoder_kind = camera_encoder
        conv_in = unet.conv_in
        self.condition_encoder = None
        if self.condition_channels() > 0:
            self.condition_encoder = zero_conv(
                self.condition_channels(),
                conv_in.out_channels,
                conv_in.kernel_size,
                padding=conv_in.padding,
            )
        self.camera_encoder = None
        if camera_encoder == "official":
            self.camera_encoder = OfficialCameraEncoder(conv_in.out_channels, downsample)
        self.domain_embedding = None
        if domain_embeddings > 0:
            self.domain_embedding = nn.Embedding(
                domain_embeddings, unet.time_embedding.linear_2.out_features
            )
            nn.init.zeros_(self.domain_embedding.weight)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def _new_model(
        cls, variant: str, in_channels: int, settings: dict[str, object]
    ) -> UNet2DConditionModel:
        """`tiny` (3.2 M parameters) or `full` (SD2.1 shapes)."""
        return UNet2DConditionModel(
            **UNET_CONFIGS[variant], in_channels=in_channels, out_channels=in_channels
        )

    @classmethod
    def _load_model(
        cls, folder: Path, variant: str, settings: dict[str, object]
    ) -> UNet2DConditionModel:
        """A diffusers U-Net without its text cross-attention; it must predict as many
        channels as it reads."""
        unet = load_diffusers_model(UNet2DConditionModel, folder, remove_cross_attention)
        if unet.config.out_channels != unet.config.in_channels:
            raise CameoError(
                f"{folder}: U-Net has {unet.config.in_channels} input channels but "
                f"{unet.config.out_channels} output channels"
            )
        return unet

    def model_additions(self) -> list[str]:
        return self._added

    # -- conditioning -------------------------------------------------------------------
    def condition_channels(self) -> int:
        """Input channels of the zero-initialised latent-resolution condition encoder (0:
        none; the `official` camera encoder reads its own pixel-resolution maps)."""
        return CAMERA_CONDITION_CHANNELS if self.camera_encoder_kind == "conv" else 0

    def condition_maps(self, latents: torch.Tensor, cond: ViewConditioning) -> torch.Tensor:
        """[B, F, condition_channels, h, w]: `camera_condition_maps` at the latent resolution
        (no channels with the `official` camera encoder)."""
        if self.camera_encoder_kind != "conv":
            return latents.new_zeros(*latents.shape[:2], 0, *latents.shape[-2:]).float()
        return camera_condition_maps(cond, *latents.shape[-2:])

    def conv_in_addition(self, latents: torch.Tensor, cond: ViewConditioning) -> torch.Tensor:
        """[B·F, conv_in channels, h, w]: what the condition and camera encoders add to
        `conv_in`'s output (zero at initialisation)."""
        parts = []
        if self.condition_encoder is not None:
            maps = self.condition_maps(latents, cond).flatten(0, 1)
            parts.append(self.condition_encoder(maps.to(self.condition_encoder.weight.dtype)))
        if self.camera_encoder is not None:
            height, width = (size * self.downsample for size in latents.shape[-2:])
            maps = official_camera_maps(cond, height, width).flatten(0, 1)
            parts.append(self.camera_encoder(maps.to(self.camera_encoder.out.weight.dtype)))
        return sum(parts[1:], parts[0])

    def time_embedding_addition(self, cond: ViewConditioning, views: int) -> torch.Tensor:
        """[B·F, time_embed_dim]: each sample's domain embedding, once per view."""
        count = self.domain_embedding.num_embeddings
        if cond.domain is None:
            raise ValueError(
                f"this backbone has {count} domain embeddings: cond.domain is required"
            )
        if not bool(((cond.domain >= 0) & (cond.domain < count)).all()):
            raise ValueError(f"cond.domain {cond.domain.tolist()} outside 0-{count - 1}")
        return self.domain_embedding(cond.domain.long()).repeat_interleave(views, dim=0)

    # -- forward ------------------------------------------------------------------------
    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: ViewConditioning
    ) -> torch.Tensor:
        """[B, F, C, h, w] noisy latents, [B] timesteps -> [B, F, C, h, w] prediction."""
        batch, views = latents.shape[:2]
        if latents.ndim != 5 or tuple(timesteps.shape) != (batch,):
            raise ValueError(
                f"expected latents [B, F, C, h, w] and timesteps [B], got "
                f"{tuple(latents.shape)} and {tuple(timesteps.shape)}"
            )
        cond.check(batch, views)
        self.set_num_views(views)
        with ExitStack() as additions:
            additions.enter_context(
                added_to_output(self.model.conv_in, self.conv_in_addition(latents, cond))
            )
            if self.domain_embedding is not None:
                embedding = self.time_embedding_addition(cond, views)
                additions.enter_context(added_to_output(self.model.time_embedding, embedding))
            out = self.model(
                latents.flatten(0, 1),
                timesteps.repeat_interleave(views),
                encoder_hidden_states=None,
            ).sample
        return out.unflatten(0, (batch, views))

    # -- layers ---------------------------------------------------------------------------
    def token_grid(self, layer: int, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Tokens per view: the latent grid halved (rounding up) once per U-Net level."""
        path = self.hooks[self.check_layer(layer)].path
        levels = len(self.model.config.block_out_channels)
        match = _BLOCK_PATH.match(path)
        if match is None:
            raise ValueError(f"not a U-Net block path: {path}")
        if match.group(1) == "down_blocks":
            level = int(match.group(2))
        elif match.group(1) == "up_blocks":
            level = levels - 1 - int(match.group(2))
        else:
            level = levels - 1
        height, width = (-(-size // self.downsample) for size in image_hw)
        for _ in range(level):
            height, width = -(-height // 2), -(-width // 2)
        return height, width
