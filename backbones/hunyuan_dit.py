"""Hunyuan-DiT as a multi-view backbone: diffusers' `HunyuanDiT2DModel` with 3D attention.

- Every `blocks.{i}.attn1` attends across the F views of a sample (`HunyuanMultiViewProcessor`:
  q/k LayerNorm and one view's 2D RoPE per view, as the stock processor). Layers are numbered
  by block index (sorted module names would put `blocks.32` 26th).
- Option `view_positions`: `shared` (default; every view at the same 2D RoPE positions, so
  the positional part of the logits favours the same pixel in another view) or `distinct`
  (view v shifted right by v `rope_base`-wide squares: the views side by side, as one wide
  image). docs/fidelity.md gives the measurement.
- Cameras: a 6-channel Plücker raymap (relative to view 0, translations normalised) and a
  1-channel reference mask at the latent resolution, patch-embedded by a zero-initialised
  conv and added to the patch tokens (a forward hook on `pos_embed` during our forward, so
  the diffusers model and its state dict stay stock). `drop_camera` zeroes the raymap of a
  sample (CFG); the reference mask stays.
- Text: there is none. The cross-attention (`attn2`) sees the DiT's own learned padding
  embedding `text_embedding_padding` at every text position (all text masks are False, as
  for padding tokens of an empty prompt); the T5 sequence that the pooler summarises into
  the time embedding is a learned null `null_text_t5` (zeros at initialisation) saved with
  the adapter. Style is 0 and the image-size condition (if the model has one) is the image
  size, as Hunyuan's pipeline sets them.
- The output keeps the first C channels (the noise/v prediction; the learned variance half
  of a `learn_sigma` model is dropped, as Hunyuan's pipeline does).

Variants: `full` is Hunyuan-DiT v1.2's shape (40 blocks, hidden 1408, 16 heads of 88,
patch 2; 1.5 B parameters) and loads a local diffusers folder with `pretrained=`; `tiny`
has 10 blocks of hidden 64 (4 heads of 16), default layer 8, at the same relative depth
(0.8) as the full model's layer 32.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from diffusers import HunyuanDiT2DModel
from diffusers.models.embeddings import (
    get_2d_rotary_pos_embed,
    get_2d_rotary_pos_embed_from_grid,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from cameo.backbones import HUNYUAN_DIT
from cameo.backbones.hunyuan_attention import HunyuanMultiViewProcessor
from cameo_cli.backbone import MultiViewBackbone, ViewConditioning
from cameo_cli.conditioning import (
    CAMERA_CONDITION_CHANNELS,
    added_to_output,
    camera_patch_tokens,
    zero_conv,
)
from cameo_cli.errors import CameoError


@dataclass(frozen=True)
class Variant:
    config: dict[str, Any]  # HunyuanDiT2DModel arguments (in_channels is added at build)
    rope_base: int  # tokens per side of the resolution whose RoPE positions are integers


# Hunyuan-DiT v1.2 (Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers, transformer/config.json).
FULL_CONFIG = dict(
    num_attention_heads=16,
    attention_head_dim=88,
    patch_size=2,
    activation_fn="gelu-approximate",
    sample_size=128,
    hidden_size=1408,
    num_layers=40,
    mlp_ratio=4.3637,
    learn_sigma=True,
    cross_attention_dim=1024,
    norm_type="layer_norm",
    cross_attention_dim_t5=2048,
    pooled_projection_dim=1024,
    text_len=77,
    text_len_t5=256,
    use_style_cond_and_image_meta_size=False,
)
# Same structure, CPU sized; keeps the image-size/style condition to exercise it.
TINY_CONFIG = dict(
    FULL_CONFIG,
    num_attention_heads=4,
    attention_head_dim=16,
    sample_size=16,
    hidden_size=64,
    num_layers=10,
    mlp_ratio=2.0,
    cross_attention_dim=32,
    cross_attention_dim_t5=32,
    pooled_projection_dim=32,
    text_len=4,
    text_len_t5=4,
    use_style_cond_and_image_meta_size=True,
)
VARIANTS = {
    "full": Variant(FULL_CONFIG, rope_base=32),  # Hunyuan's pipeline: 512 px // VAE 8 // patch 2
    "tiny": Variant(TINY_CONFIG, rope_base=16),  # a 32 x 32 input with patch 2
}


class HunyuanDiT(MultiViewBackbone):
    """Hunyuan-DiT with 3D self-attention in every block and Plücker-raymap conditioning."""

    spec = HUNYUAN_DIT
    model_class = HunyuanDiT2DModel
    pretrained_subfolder = "transformer"

    def __init__(
        self,
        transformer: HunyuanDiT2DModel,
        *,
        variant: str,
        downsample: int,
        view_positions: str = "shared",
    ) -> None:
        super().__init__()
        config = transformer.config
        self.model = transformer
        self.rope_base = VARIANTS[variant].rope_base
        self.downsample = downsample
        self.view_positions = view_positions
        self.camera_encoder = zero_conv(
            CAMERA_CONDITION_CHANNELS,
            config.hidden_size,
            config.patch_size,
            stride=config.patch_size,
        )
        self.null_text_t5 = nn.Parameter(
            torch.zeros(config.text_len_t5, config.cross_attention_dim_t5)
        )
        self.hooks = self.spec_hooks(transformer)
        self.processors = [HunyuanMultiViewProcessor(hook) for hook in self.hooks]
        for hook, processor in zip(self.hooks, self.processors, strict=True):
            transformer.get_submodule(hook.path).set_processor(processor)
        self._checkpointing = False

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block's activations in backward (diffusers' Hunyuan-DiT has no
        checkpointing of its own). Exit a `probe` before calling backward."""
        if self._checkpointing:
            return
        for block in self.model.blocks:
            block.forward = partial(checkpoint, block.forward, use_reentrant=False)
        self._checkpointing = True

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def resolve_options(
        cls, variant: str, in_channels: int, options: dict[str, object]
    ) -> dict[str, object]:
        """The base class's check, and `qk_norm` must stay on (Hunyuan-DiT has q/k norms)."""
        settings = super().resolve_options(variant, in_channels, options)
        if not settings["qk_norm"]:
            raise CameoError(f"backbone '{cls.name}': Hunyuan-DiT always normalises q and k")
        return settings

    @classmethod
    def _new_model(
        cls, variant: str, in_channels: int, settings: dict[str, object]
    ) -> HunyuanDiT2DModel:
        return HunyuanDiT2DModel(in_channels=in_channels, **VARIANTS[variant].config)

    @classmethod
    def _load_model(
        cls, folder: Path, variant: str, settings: dict[str, object]
    ) -> HunyuanDiT2DModel:
        """A Hunyuan-DiT transformer of `variant`'s shape."""
        transformer = super()._load_model(folder, variant, settings)
        expected = VARIANTS[variant].config
        shape = ("num_layers", "num_attention_heads", "attention_head_dim", "patch_size")
        found = {key: transformer.config[key] for key in shape}
        if found != {key: expected[key] for key in shape}:
            raise CameoError(
                f"{folder}: a Hunyuan-DiT with {found['num_layers']} blocks, "
                f"{found['num_attention_heads']} heads of {found['attention_head_dim']}, patch "
                f"{found['patch_size']} is not the '{variant}' variant ({expected['num_layers']} "
                f"blocks, {expected['num_attention_heads']} heads of "
                f"{expected['attention_head_dim']}, patch {expected['patch_size']})"
            )
        return transformer

    @classmethod
    def _wrap(
        cls, model: HunyuanDiT2DModel, variant: str, settings: dict[str, object]
    ) -> HunyuanDiT:
        return cls(
            model,
            variant=variant,
            downsample=int(settings["downsample"]),
            view_positions=str(settings["view_positions"]),
        )

    # -- forward --------------------------------------------------------------------------
    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: ViewConditioning
    ) -> torch.Tensor:
        """[B, F, C, h, w] noisy latents, [B] timesteps -> [B, F, C, h, w] prediction."""
        batch, views, channels, height, width = latents.shape
        patch = self.model.config.patch_size
        if tuple(timesteps.shape) != (batch,) or height % patch or width % patch:
            raise ValueError(
                f"{self.name}: expected latents [B, F, C, h, w] with h, w multiples of {patch} "
                f"and timesteps [B], got {tuple(latents.shape)} and {tuple(timesteps.shape)}"
            )
        cond.check(batch, views)
        self.set_num_views(views)
        items = batch * views
        dtype, device = latents.dtype, latents.device
        camera_tokens = camera_patch_tokens(self.camera_encoder, cond, height, width)
        # Hunyuan's time embedding runs in the timestep's dtype (its pipeline casts to the
        # latents' dtype); an integer timestep fails inside diffusers.
        timestep = timesteps.to(dtype).repeat_interleave(views)
        grid = (height // patch, width // patch)
        side_by_side = None
        if self.view_positions == "distinct":
            side_by_side = self.rotary_embedding(*grid, device, views=views)
        for processor in self.processors:
            processor.view_rotary_emb = side_by_side
        with added_to_output(self.model.pos_embed, camera_tokens):
            output = self.model(
                latents.flatten(0, 1),
                timestep,
                image_rotary_emb=self.rotary_embedding(*grid, device),
                return_dict=False,
                **self.null_conditions(items, cond.image_size, dtype, device),
            )[0]
        return output[:, :channels].unflatten(0, (batch, views))

    def null_conditions(
        self, items: int, image_size: tuple[int, int], dtype: torch.dtype, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """The text/size/style inputs of an unprompted Hunyuan-DiT, for `items` images."""
        config = self.model.config
        height, width = image_size
        # diffusers reshapes these with `view`: they must be real copies, not expansions.
        null_t5 = self.null_text_t5.to(dtype).repeat(items, 1, 1)
        return {
            "encoder_hidden_states": torch.zeros(
                items, config.text_len, config.cross_attention_dim, dtype=dtype, device=device
            ),
            "text_embedding_mask": torch.zeros(items, config.text_len, device=device),
            "encoder_hidden_states_t5": null_t5,
            "text_embedding_mask_t5": torch.zeros(items, config.text_len_t5, device=device),
            # original size, target size, crop top-left (as Hunyuan's pipeline)
            "image_meta_size": torch.tensor(
                [[height, width, height, width, 0, 0]], dtype=dtype, device=device
            ).repeat(items, 1),
            "style": torch.zeros(items, dtype=torch.long, device=device),
        }

    def rotary_embedding(
        self, grid_h: int, grid_w: int, device: torch.device, views: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """2D RoPE (cos, sin) [views·h·w, head_dim], positioned as Hunyuan's pipeline: the
        grid is fitted into a `rope_base` square (aspect kept, centred); view v's square is
        shifted right by v squares (the views side by side; the shift's rotation is added
        to the angles, since diffusers' grid helper assumes a crop starting at 0)."""
        scale = self.rope_base / max(grid_h, grid_w)
        fitted_h, fitted_w = round(grid_h * scale), round(grid_w * scale)
        top = round((self.rope_base - fitted_h) / 2)
        left = round((self.rope_base - fitted_w) / 2)
        head_dim = self.model.config.attention_head_dim
        region = ((top, left), (top + fitted_h, left + fitted_w))
        cos, sin = get_2d_rotary_pos_embed(head_dim, region, (grid_h, grid_w), device=device)
        if views == 1:
            return cos, sin
        shifts = torch.zeros(2, 1, 1, views, device=device)  # (column, row) per view
        shifts[0, 0, 0] = torch.arange(views, device=device) * float(self.rope_base)
        shift_cos, shift_sin = get_2d_rotary_pos_embed_from_grid(head_dim, shifts, use_real=True)
        cos_v = cos * shift_cos[:, None] - sin * shift_sin[:, None]  # [views, hw, d]
        sin_v = sin * shift_cos[:, None] + cos * shift_sin[:, None]
        return cos_v.flatten(0, 1), sin_v.flatten(0, 1)

    # -- layers ---------------------------------------------------------------------------
    def token_grid(self, layer: int, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Tokens per view: the latent grid divided by the patch size (every layer alike)."""
        self.check_layer(layer)
        stride = self.downsample * self.model.config.patch_size
        return image_hw[0] // stride, image_hw[1] // stride
