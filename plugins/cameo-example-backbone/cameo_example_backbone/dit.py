"""ExampleDiT: diffusers' `DiTTransformer2DModel` (Peebles & Xie) as a cameo backbone.

What a plugin adapter does, in order:
1. wrap a diffusers model as `self.model` (saved by cameo in diffusers layout);
2. declare one `LayerHook` per self-attention layer, in the order cameo numbers them, and
   give those layers cameo's multi-view processor (`MultiViewAttnProcessor`);
3. optionally add q/k LayerNorms (the official CAMEO default), declared in `model_additions`
   because diffusers' config does not record them;
4. add the camera input: Plücker raymap + reference mask through a zero-initialised module
   (here a patch-embedding conv whose tokens are added to the DiT's patch tokens), so the
   camera input changes nothing at initialisation;
5. implement `forward` with cameo's signature and `token_grid` for the layer table.

The DiT is class-conditional; cameo has no classes, so every image gets the DiT's own
learned "null class" (the row its classifier-free guidance drops labels to). The learned
variance half of its output (`out_channels = 2C`) is dropped. Inputs must be square
(diffusers' DiT unpatchifies a square token grid).
"""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel
from torch import nn

from cameo_cli.attention import LayerHook, MultiViewAttnProcessor
from cameo_cli.backbone import (
    MultiViewBackbone,
    ViewConditioning,
    load_diffusers_model,
    resolve_diffusers_folder,
)
from cameo_cli.cameras import plucker_raymap
from cameo_cli.errors import CameoError

CONDITION_CHANNELS = 7  # Plücker direction (3) + moment (3) + reference mask (1)

CONFIGS = {
    # DiT-XL/2 (facebook/DiT-XL-2-256): 28 blocks, 16 heads of 72, patch 2 (750 M parameters
    # in diffusers' layout, which keeps a timestep/label embedder per block).
    "full": dict(
        num_attention_heads=16,
        attention_head_dim=72,
        num_layers=28,
        sample_size=32,
        patch_size=2,
        num_embeds_ada_norm=1000,
    ),
    # The same architecture for CPU tests: 5 blocks, 4 heads of 16.
    "tiny": dict(
        num_attention_heads=4,
        attention_head_dim=16,
        num_layers=5,
        sample_size=16,
        patch_size=2,
        num_embeds_ada_norm=1,
    ),
}
DEFAULT_LAYERS = {"full": 22, "tiny": 4}  # relative depth 0.8 in both


class ExampleDiT(MultiViewBackbone):
    """A DiT whose every `transformer_blocks.{i}.attn1` attends across the views."""

    name = "example-dit"
    # Every option `build` accepts, with its default; the recipe's `backbone.qk_norm` is
    # always passed. They are saved in cameo_backbone.json and passed again on loading.
    option_defaults: dict[str, object] = {"qk_norm": True, "downsample": None}

    def __init__(
        self, dit: DiTTransformer2DModel, *, default_layer: int, downsample: int, qk_norm: bool
    ) -> None:
        super().__init__()
        self.model = dit
        self.default_layer = default_layer
        self.downsample = downsample
        self.hooks = [
            LayerHook(index=i, path=f"transformer_blocks.{i}.attn1", multiview=True)
            for i in range(dit.config.num_layers)
        ]
        self._added: list[str] = []
        for hook in self.hooks:  # (models with `attn_processors` can use install_processors)
            attn = dit.get_submodule(hook.path)
            if qk_norm:  # new modules inside the diffusers model: declared in model_additions
                head_dim = attn.inner_dim // attn.heads
                attn.norm_q = nn.LayerNorm(head_dim, eps=1e-6)
                attn.norm_k = nn.LayerNorm(head_dim, eps=1e-6)
                self._added += [f"{hook.path}.norm_q", f"{hook.path}.norm_k"]
            attn.set_processor(MultiViewAttnProcessor(hook))
        patch = dit.config.patch_size
        self.camera_encoder = nn.Conv2d(CONDITION_CHANNELS, dit.inner_dim, patch, stride=patch)
        nn.init.zeros_(self.camera_encoder.weight)
        nn.init.zeros_(self.camera_encoder.bias)

    @classmethod
    def build(
        cls,
        variant: str = "tiny",
        *,
        in_channels: int = 4,
        pretrained: str | None = None,
        **options: object,
    ) -> ExampleDiT:
        """`tiny` or `full` (DiT-XL/2); `pretrained`: a local diffusers DiT folder (the
        transformer itself or a pipeline folder with `transformer/`)."""
        if variant not in CONFIGS:
            raise CameoError(f"backbone '{cls.name}': unknown config '{variant}' (tiny, full)")
        unknown = sorted(set(options) - set(cls.option_defaults))
        if unknown:
            raise CameoError(
                f"backbone '{cls.name}': unknown options {unknown} "
                f"(valid: {sorted(cls.option_defaults)})"
            )
        settings = {**cls.option_defaults, **options}
        if settings["downsample"] is None:  # SD latents are 8x smaller; pixels are 1x
            settings["downsample"] = 8 if in_channels == 4 else 1
        if pretrained is not None:
            folder = resolve_diffusers_folder(pretrained, "transformer")
            dit = load_diffusers_model(DiTTransformer2DModel, folder)
            if dit.config.in_channels != in_channels:
                raise CameoError(
                    f"{folder}: DiT has {dit.config.in_channels} input channels, "
                    f"the image codec needs {in_channels}"
                )
        else:
            dit = DiTTransformer2DModel(
                **CONFIGS[variant], in_channels=in_channels, out_channels=2 * in_channels
            )
        backbone = cls(
            dit,
            default_layer=DEFAULT_LAYERS[variant],
            downsample=int(settings["downsample"]),
            qk_norm=bool(settings["qk_norm"]),
        )
        backbone.record_build(variant, in_channels, settings)
        return backbone

    def model_additions(self) -> list[str]:
        """Modules added inside `model` (saved with cameo's extra weights, not diffusers')."""
        return self._added

    def enable_gradient_checkpointing(self) -> None:
        """Recompute block activations in backward (`backbone.gradient_checkpointing`)."""
        self.model.enable_gradient_checkpointing()

    def condition_maps(self, latents: torch.Tensor, cond: ViewConditioning) -> torch.Tensor:
        """[B·F, 7, h, w]: Plücker raymap (zero where `drop_camera`) + reference mask."""
        batch, views, _, height, width = latents.shape
        raymap = plucker_raymap(
            cond.intrinsics.float(),
            cond.world_to_camera.float(),
            height,
            width,
            image_size=tuple(cond.image_size),
        )
        if cond.drop_camera is not None:
            keep = (~cond.drop_camera.bool()).to(raymap.dtype)
            raymap = raymap * keep[:, None, None, None, None]
        mask = cond.ref_mask.to(raymap.dtype)[:, :, None, None, None]
        maps = torch.cat([raymap, mask.expand(batch, views, 1, height, width)], dim=2)
        return maps.flatten(0, 1)

    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: ViewConditioning
    ) -> torch.Tensor:
        """[B, F, C, h, w] noisy latents, [B] timesteps -> [B, F, C, h, w] prediction."""
        batch, views, channels, height, width = latents.shape
        if height != width or height % self.model.config.patch_size:
            raise ValueError(
                f"{self.name}: needs square inputs of whole patches, got {height}x{width}"
            )
        cond.check(batch, views)
        self.set_num_views(views)
        maps = self.condition_maps(latents, cond)
        camera_tokens = self.camera_encoder(maps.to(self.camera_encoder.weight.dtype))
        camera_tokens = camera_tokens.flatten(2).transpose(1, 2)  # [B·F, tokens, dim]

        def add_camera(_module: nn.Module, _inputs: object, tokens: torch.Tensor):
            return tokens + camera_tokens.to(tokens.dtype)

        null_class = self.model.config.num_embeds_ada_norm  # the guidance-dropped label
        labels = torch.full((batch * views,), null_class, dtype=torch.long, device=latents.device)
        handle = self.model.pos_embed.register_forward_hook(add_camera)
        try:
            out = self.model(
                latents.flatten(0, 1),
                timestep=timesteps.repeat_interleave(views),
                class_labels=labels,
                return_dict=False,
            )[0]
        finally:
            handle.remove()
        return out[:, :channels].unflatten(0, (batch, views))

    def token_grid(self, layer: int, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Tokens per view: the latent grid divided by the patch size (every layer alike)."""
        self.check_layer(layer)
        stride = self.downsample * self.model.config.patch_size
        return image_hw[0] // stride, image_hw[1] // stride
