"""Hunyuan-DiT as a multi-view backbone: diffusers' `HunyuanDiT2DModel` with 3D attention.

- Every `blocks.{i}.attn1` attends across the F views of a sample (`HunyuanMultiViewProcessor`:
  q/k LayerNorm and one view's 2D RoPE per view, as the stock processor). Layers are numbered
  by block index (sorted module names would put `blocks.32` 26th).
- Cameras: a 6-channel Plücker raymap (relative to view 0, translations normalised) and a
  1-channel reference mask at the latent resolution, patch-embedded by a zero-initialised
  conv and added to the patch tokens (a forward hook on `pos_embed`, so the diffusers model
  and its state dict stay stock). `drop_camera` zeroes the raymap of a sample (CFG).
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
from diffusers.models.embeddings import get_2d_rotary_pos_embed
from torch import nn
from torch.utils.checkpoint import checkpoint

from cameo_cli.attention.hooks import LayerHook
from cameo_cli.attention.hunyuan import HunyuanMultiViewProcessor
from cameo_cli.backbone import LayerInfo, MultiViewBackbone, ViewConditioning
from cameo_cli.cameras import plucker_raymap
from cameo_cli.errors import CameoError

CAMERA_CHANNELS = 7  # Plücker direction (3) + moment (3) + reference mask (1)


@dataclass(frozen=True)
class Variant:
    config: dict[str, Any]  # HunyuanDiT2DModel arguments (in_channels is added at build)
    default_layer: int
    rope_base: int  # tokens per side of the resolution whose RoPE positions are integers


VARIANTS = {
    # Hunyuan-DiT v1.2 (Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers, transformer/config.json).
    "full": Variant(
        config=dict(
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
        ),
        default_layer=32,
        rope_base=32,  # Hunyuan's pipeline: 512 px // VAE 8 // patch 2
    ),
    # Same structure, CPU sized; keeps the image-size/style condition to exercise it.
    "tiny": Variant(
        config=dict(
            num_attention_heads=4,
            attention_head_dim=16,
            patch_size=2,
            activation_fn="gelu-approximate",
            sample_size=16,
            hidden_size=64,
            num_layers=10,
            mlp_ratio=2.0,
            learn_sigma=True,
            cross_attention_dim=32,
            norm_type="layer_norm",
            cross_attention_dim_t5=32,
            pooled_projection_dim=32,
            text_len=4,
            text_len_t5=4,
            use_style_cond_and_image_meta_size=True,
        ),
        default_layer=8,
        rope_base=16,  # a 32 x 32 input with patch 2
    ),
}


class HunyuanDiT(MultiViewBackbone):
    """Hunyuan-DiT with 3D self-attention in every block and Plücker-raymap conditioning."""

    name = "hunyuan-dit"

    def __init__(
        self,
        transformer: HunyuanDiT2DModel,
        *,
        variant: str,
        in_channels: int,
        options: dict[str, Any],
    ) -> None:
        super().__init__()
        config = transformer.config
        self.transformer = transformer
        self.variant = variant
        self.in_channels = in_channels
        self.options = options
        self.default_layer = VARIANTS[variant].default_layer
        self.rope_base = VARIANTS[variant].rope_base
        # SD latents (4 channels) are 8x smaller than the image; pixel space is 1x.
        self.downsample = 8 if in_channels == 4 else 1
        self.camera_encoder = nn.Conv2d(
            CAMERA_CHANNELS, config.hidden_size, config.patch_size, stride=config.patch_size
        )
        nn.init.zeros_(self.camera_encoder.weight)
        nn.init.zeros_(self.camera_encoder.bias)
        self.null_text_t5 = nn.Parameter(
            torch.zeros(config.text_len_t5, config.cross_attention_dim_t5)
        )
        self._camera_tokens: torch.Tensor | None = None
        transformer.pos_embed.register_forward_hook(self._add_camera_tokens)
        self.hooks = [
            LayerHook(index=i, path=f"blocks.{i}.attn1", multiview=True)
            for i in range(config.num_layers)
        ]
        for hook, block in zip(self.hooks, transformer.blocks, strict=True):
            block.attn1.set_processor(HunyuanMultiViewProcessor(hook))
        if options.get("gradient_checkpointing"):
            for block in transformer.blocks:
                block.forward = partial(checkpoint, block.forward, use_reentrant=False)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        variant: str = "tiny",
        *,
        in_channels: int = 4,
        pretrained: str | None = None,
        **options: Any,
    ) -> HunyuanDiT:
        """Build `tiny` or `full`; `pretrained` is a local diffusers Hunyuan-DiT folder."""
        if variant not in VARIANTS:
            raise CameoError(f"unknown Hunyuan-DiT variant '{variant}' (known: tiny, full)")
        unknown = set(options) - {"qk_norm", "gradient_checkpointing"}
        if unknown:
            raise CameoError(
                f"unknown Hunyuan-DiT option(s) {sorted(unknown)} "
                "(known: qk_norm, gradient_checkpointing)"
            )
        if not options.get("qk_norm", True):
            raise CameoError("Hunyuan-DiT always normalises q and k: qk_norm must be true")
        if pretrained is not None:
            transformer = _load_pretrained(pretrained, variant, in_channels)
        else:
            transformer = HunyuanDiT2DModel(in_channels=in_channels, **VARIANTS[variant].config)
        return cls(transformer, variant=variant, in_channels=in_channels, options=dict(options))

    # -- forward --------------------------------------------------------------------------
    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: ViewConditioning
    ) -> torch.Tensor:
        batch, views, channels, height, width = latents.shape
        patch = self.transformer.config.patch_size
        if channels != self.in_channels or height % patch or width % patch:
            raise ValueError(
                f"hunyuan-dit expects [B, F, {self.in_channels}, h, w] with h, w multiples of "
                f"{patch}, got {list(latents.shape)}"
            )
        self.set_num_views(views)
        items = batch * views
        dtype, device = latents.dtype, latents.device
        camera = self._camera_channels(cond, height, width).to(dtype)
        # Hunyuan's time embedding runs in the timestep's dtype (its pipeline casts to the
        # latents' dtype); an integer timestep fails inside diffusers.
        timestep = timesteps.to(dtype).repeat_interleave(views)
        self._camera_tokens = self.camera_encoder(camera).flatten(2).transpose(1, 2)
        try:
            output = self.transformer(
                latents.reshape(items, channels, height, width),
                timestep,
                image_rotary_emb=self.rotary_embedding(height // patch, width // patch, device),
                return_dict=False,
                **self._null_conditions(items, cond.image_size, dtype, device),
            )[0]
        finally:
            self._camera_tokens = None
        return output[:, :channels].reshape(batch, views, channels, height, width)

    def _camera_channels(self, cond: ViewConditioning, height: int, width: int) -> torch.Tensor:
        """[B·F, 7, h, w]: Plücker raymap (zeroed where `drop_camera`) + reference mask."""
        raymap = plucker_raymap(
            cond.intrinsics.float(),
            cond.world_to_camera.float(),
            height,
            width,
            image_size=tuple(cond.image_size),
        )
        if cond.drop_camera is not None:
            keep = ~cond.drop_camera.to(device=raymap.device, dtype=torch.bool)
            raymap = torch.where(keep[:, None, None, None, None], raymap, 0.0)
        batch, views = raymap.shape[:2]
        mask = cond.ref_mask.to(raymap.dtype)[:, :, None, None, None]
        mask = mask.expand(batch, views, 1, height, width)
        return torch.cat([raymap, mask], dim=2).flatten(0, 1)

    def _add_camera_tokens(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], tokens: torch.Tensor
    ) -> torch.Tensor:
        """Forward hook of `transformer.pos_embed`: patch tokens + camera tokens."""
        if self._camera_tokens is None:
            return tokens
        return tokens + self._camera_tokens.to(tokens.dtype)

    def _null_conditions(
        self, items: int, image_size: tuple[int, int], dtype: torch.dtype, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """The text/size/style inputs of an unprompted Hunyuan-DiT, for `items` images."""
        config = self.transformer.config
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
        self, grid_h: int, grid_w: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One view's 2D RoPE (cos, sin) [h·w, head_dim], positioned as Hunyuan's pipeline:
        the grid is fitted into a `rope_base` square (aspect kept, centred)."""
        scale = self.rope_base / max(grid_h, grid_w)
        fitted_h, fitted_w = round(grid_h * scale), round(grid_w * scale)
        top = round((self.rope_base - fitted_h) / 2)
        left = round((self.rope_base - fitted_w) / 2)
        head_dim = self.transformer.config.attention_head_dim
        region = ((top, left), (top + fitted_h, left + fitted_w))
        return get_2d_rotary_pos_embed(head_dim, region, (grid_h, grid_w), device=device)

    # -- layers ---------------------------------------------------------------------------
    def token_grid(self, layer: int, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Tokens per view (h, w) of `layer` for an image of `image_hw` pixels."""
        self.check_layer(layer)
        stride = self.downsample * self.transformer.config.patch_size
        return image_hw[0] // stride, image_hw[1] // stride

    def layers(self, resolution: int) -> list[LayerInfo]:
        config = self.transformer.config
        return [
            LayerInfo(
                index=hook.index,
                path=hook.path,
                grid=self.token_grid(hook.index, (resolution, resolution)),
                heads=config.num_attention_heads,
                head_dim=config.attention_head_dim,
                multiview=hook.multiview,
                default=hook.index == self.default_layer,
            )
            for hook in self.hooks
        ]


def _load_pretrained(folder: str, variant: str, in_channels: int) -> HunyuanDiT2DModel:
    """A `HunyuanDiT2DModel` of `variant`'s shape from a local diffusers folder (a pipeline
    folder with `transformer/`, or the transformer folder itself)."""
    path = Path(folder)
    if not path.is_dir():
        raise CameoError(f"{folder}: pretrained Hunyuan-DiT folder does not exist")
    if (path / "transformer" / "config.json").is_file():
        path = path / "transformer"
    elif not (path / "config.json").is_file():
        raise CameoError(
            f"{folder}: not a diffusers Hunyuan-DiT folder (no config.json, no transformer/)"
        )
    transformer = HunyuanDiT2DModel.from_pretrained(path, local_files_only=True)
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
    if transformer.config.in_channels != in_channels:
        raise CameoError(
            f"{folder}: the pretrained Hunyuan-DiT takes {transformer.config.in_channels} "
            f"input channels, the codec gives {in_channels}"
        )
    return transformer
