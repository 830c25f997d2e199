"""ExampleDiT: diffusers' `DiTTransformer2DModel` (Peebles & Xie) as a cameo backbone.

What a plugin adapter does, in order:
1. wrap a diffusers model as `self.model` (saved by cameo in diffusers layout);
2. hook the self-attention layers its spec lists (`self.hooks = self.spec_hooks(model)`:
   the spec's `layer_paths` are the one declaration) and give those layers cameo's
   multi-view processor (`MultiViewAttnProcessor`);
3. optionally add q/k LayerNorms (the official CAMEO default), declared in `model_additions`
   because diffusers' config does not record them;
4. add the camera input: `cameo_cli.conditioning.camera_condition_maps` (Plücker raymap +
   reference mask) through a zero-initialised module (`zero_conv`; here a patch-embedding
   conv, `camera_patch_tokens`, whose tokens `added_to_output` adds to the DiT's patch
   tokens), so the camera input changes nothing at initialisation;
5. implement `forward` with cameo's signature and `token_grid` for the layer table;
6. name the registry `spec` and supply `_new_model`; `__init__(model, **options)` takes the
   spec's options (cameo's `build` checks them, fills defaults and does the rest).

The DiT is class-conditional; cameo has no classes, so every image gets the DiT's own
learned "null class" (the row its classifier-free guidance drops labels to). The learned
variance half of its output (`out_channels = 2C`) is dropped. Inputs must be square
(diffusers' DiT unpatchifies a square token grid).
"""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel

from cameo_cli.attention import MultiViewAttnProcessor, add_qk_norm
from cameo_cli.backbone import MultiViewBackbone, ViewConditioning
from cameo_cli.conditioning import (
    CAMERA_CONDITION_CHANNELS,
    added_to_output,
    camera_patch_tokens,
    zero_conv,
)
from cameo_example_backbone.spec import EXAMPLE_DIT

# DiT-XL/2 (facebook/DiT-XL-2-256): 28 blocks, 16 heads of 72, patch 2 (750 M parameters in
# diffusers' layout, which keeps a timestep/label embedder per block).
FULL_CONFIG = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    num_layers=28,
    sample_size=32,
    patch_size=2,
    num_embeds_ada_norm=1000,
)
# The same architecture for CPU tests: 5 blocks, 4 heads of 16 (default layer 4: cameo keeps
# the spec's relative depth, 22 of 28).
CONFIGS = {
    "full": FULL_CONFIG,
    "tiny": dict(
        FULL_CONFIG,
        num_attention_heads=4,
        attention_head_dim=16,
        num_layers=5,
        sample_size=16,
        num_embeds_ada_norm=1,
    ),
}


class ExampleDiT(MultiViewBackbone):
    """A DiT whose every `transformer_blocks.{i}.attn1` attends across the views."""

    spec = EXAMPLE_DIT  # name, layer paths and default layer (tests check it against the model)
    model_class = DiTTransformer2DModel
    pretrained_subfolder = "transformer"  # where a pipeline folder keeps the DiT
    # Options: the spec's `parameters` (default `BackboneOptions`: qk_norm, downsample), what
    # a recipe's `backbone.options` may set; saved in cameo_backbone.json, passed on loading.

    def __init__(self, dit: DiTTransformer2DModel, *, downsample: int, qk_norm: bool) -> None:
        super().__init__()
        self.model = dit
        self.downsample = downsample
        self.hooks = self.spec_hooks(dit)  # the spec's layer paths the model has, in order
        # New modules inside the diffusers model: declared in `model_additions`.
        self._added = add_qk_norm(dit, self.hooks) if qk_norm else []
        for hook in self.hooks:  # (models with `attn_processors` can use install_processors)
            dit.get_submodule(hook.path).set_processor(MultiViewAttnProcessor(hook))
        patch = dit.config.patch_size
        self.camera_encoder = zero_conv(
            CAMERA_CONDITION_CHANNELS, dit.inner_dim, patch, stride=patch
        )

    # `MultiViewBackbone.build` checks the options, then makes a new model (`_new_model`) or
    # loads `pretrained` (`_load_model`, by default diffusers' `model_class.from_pretrained`
    # with every weight checked), checks its input channels and wraps it (`cls(model,
    # **options)`).
    @classmethod
    def _new_model(
        cls, variant: str, in_channels: int, settings: dict[str, object]
    ) -> DiTTransformer2DModel:
        """`tiny` or `full` (DiT-XL/2), predicting noise and the learned variance."""
        return DiTTransformer2DModel(
            **CONFIGS[variant], in_channels=in_channels, out_channels=2 * in_channels
        )

    def model_additions(self) -> list[str]:
        """Modules added inside `model` (saved with cameo's extra weights, not diffusers')."""
        return self._added

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
        camera_tokens = camera_patch_tokens(self.camera_encoder, cond, height, width)
        null_class = self.model.config.num_embeds_ada_norm  # the guidance-dropped label
        labels = torch.full((batch * views,), null_class, dtype=torch.long, device=latents.device)
        with added_to_output(self.model.pos_embed, camera_tokens):  # patch tokens + cameras
            out = self.model(
                latents.flatten(0, 1),
                timestep=timesteps.repeat_interleave(views),
                class_labels=labels,
                return_dict=False,
            )[0]
        return out[:, :channels].unflatten(0, (batch, views))

    def token_grid(self, layer: int, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Tokens per view: the latent grid divided by the patch size (every layer alike)."""
        self.check_layer(layer)
        stride = self.downsample * self.model.config.patch_size
        return image_hw[0] // stride, image_hw[1] // stride
