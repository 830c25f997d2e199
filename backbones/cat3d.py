"""CAT3D: an SD2.1-shaped U-Net with 3D self-attention and Plücker-raymap camera input.

- The text cross-attention (`attn2`) of every transformer block is removed; the 16 `attn1`
  layers, in sorted module-name order (= execution order once `attn2` is gone), are the
  hook locations. Layer 10 is `up_blocks.2.attentions.0.transformer_blocks.0.attn1`.
- Layers at the first block width (320 channels in SD2.1, the highest resolution) attend
  per view; all others attend across the F views of a sample (3D attention).
- Camera input: the 6-channel Plücker raymap (relative to view 0, see
  `cameo_cli.cameras.plucker_raymap`) and a 1-channel reference mask at the latent
  resolution go through a zero-initialised conv with `conv_in`'s kernel whose output is
  added to `conv_in`'s. This equals widening `conv_in` with zero weights, so at
  initialisation the model predicts exactly what the wrapped U-Net predicts.
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
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from backbones import CAT3D
from cameo_cli.attention import LayerHook, add_qk_norm, install_processors
from cameo_cli.backbone import MultiViewBackbone, ViewConditioning, load_diffusers_model
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


def self_attention_paths(unet: nn.Module) -> list[str]:
    """The `attn1` module paths in sorted name order (the layer numbering of CAMEO)."""
    return sorted(name for name, _ in unet.named_modules() if name.endswith(".attn1"))


def unet_hooks(unet: UNet2DConditionModel) -> list[LayerHook]:
    """One hook per `attn1`; layers at the first block width stay per-view."""
    first_width = unet.config.block_out_channels[0]
    return [
        LayerHook(index=i, path=path, multiview=unet.get_submodule(path).inner_dim != first_width)
        for i, path in enumerate(self_attention_paths(unet))
    ]


class Cat3D(MultiViewBackbone):
    """CAT3D multi-view U-Net (see the module docstring)."""

    spec = CAT3D
    model_class = UNet2DConditionModel
    pretrained_subfolder = "unet"
    option_defaults: dict[str, object] = {"qk_norm": True, "downsample": None}

    def __init__(self, unet: UNet2DConditionModel, *, qk_norm: bool, downsample: int) -> None:
        super().__init__()
        remove_cross_attention(unet)
        self.model = unet
        self.hooks = unet_hooks(unet)
        self._added = add_qk_norm(unet, self.hooks) if qk_norm else []
        install_processors(unet, self.hooks)
        self.downsample = downsample
        conv_in = unet.conv_in
        self.condition_encoder = zero_conv(
            self.condition_channels(),
            conv_in.out_channels,
            conv_in.kernel_size,
            padding=conv_in.padding,
        )

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

    @classmethod
    def _wrap(cls, model: UNet2DConditionModel, variant: str, settings: dict[str, object]) -> Cat3D:
        return cls(model, qk_norm=bool(settings["qk_norm"]), downsample=int(settings["downsample"]))

    def model_additions(self) -> list[str]:
        return self._added

    # -- conditioning -------------------------------------------------------------------
    def condition_channels(self) -> int:
        """Input channels of the zero-initialised condition encoder."""
        return CAMERA_CONDITION_CHANNELS

    def condition_maps(self, latents: torch.Tensor, cond: ViewConditioning) -> torch.Tensor:
        """[B, F, 7, h, w]: `camera_condition_maps` at the latent resolution."""
        return camera_condition_maps(cond, *latents.shape[-2:])

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
        maps = self.condition_maps(latents, cond).flatten(0, 1)
        added = self.condition_encoder(maps.to(self.condition_encoder.weight.dtype))
        with added_to_output(self.model.conv_in, added):
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
