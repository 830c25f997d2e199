"""cameo's built-in backbones, registered through the `cameo.backbones` entry points.

This module stays light (no torch): each spec names its adapter class by string and its
options dataclass (`parameters`, what a recipe's `backbone.options` may set), and each
adapter reads its name, layer paths and default layer from its spec here
(`tests/test_backbones_spec.py` checks them against the built models).
"""

from dataclasses import dataclass, field, replace

from cameo_cli.registry import BackboneOptions, BackboneSpec


@dataclass(frozen=True)
class Cat3DOptions(BackboneOptions):
    """CAT3D's options (see `backbones/cat3d.py`)."""

    # "conv" (latent-resolution zero conv) or "official" (the official pixel-resolution one)
    camera_encoder: str = field(default="conv", metadata={"choices": ("official", "conv")})
    domain_embeddings: int = 0  # zero-initialised domain embeddings (the official switch: 3)


@dataclass(frozen=True)
class MVGenMasterOptions(Cat3DOptions):
    """MVGenMaster's options (see `backbones/mvgenmaster.py`)."""

    prior_drop: float = 0.15  # training dropout of the position prior
    num_frequencies: int = 4  # Fourier frequencies of the position prior
    depth_mid_times: float = 4.0  # depth contraction beyond this x the median depth


@dataclass(frozen=True)
class HunyuanOptions(BackboneOptions):
    """Hunyuan-DiT's options (see `backbones/hunyuan_dit.py`)."""

    # 2D RoPE per view: "shared" positions or "distinct" (the views side by side)
    view_positions: str = field(default="shared", metadata={"choices": ("shared", "distinct")})


# SD2.1-shaped U-Net, text cross-attention removed: its 16 `attn1` layers in sorted order;
# those at the first block width (0, 1 in `down_blocks.0`, 13-15 in `up_blocks.3`) stay 2D.
CAT3D = BackboneSpec(
    name="cat3d",
    description="CAT3D multi-view U-Net (SD2.1-shaped, 3D self-attention, Plücker raymaps)",
    default_layer=10,
    layer_paths=tuple(
        sorted(
            [
                f"down_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1"
                for b in range(3)
                for a in range(2)
            ]
            + [
                f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1"
                for b in (1, 2, 3)
                for a in range(3)
            ]
            + ["mid_block.attentions.0.transformer_blocks.0.attn1"]
        )
    ),
    adapter="cameo.backbones.cat3d:Cat3D",
    per_view_layers=(0, 1, 13, 14, 15),
    parameters=Cat3DOptions,
    blocks=("down_blocks", "mid_block", "up_blocks"),
)

MVGENMASTER = replace(
    CAT3D,
    name="mvgenmaster",
    description="MVGenMaster U-Net: CAT3D plus warped-reference geometric priors",
    adapter="cameo.backbones.mvgenmaster:MVGenMaster",
    parameters=MVGenMasterOptions,
)

HUNYUAN_DIT = BackboneSpec(
    name="hunyuan-dit",
    description="Hunyuan-DiT transformer (40 blocks) with 3D self-attention and per-view 2D RoPE",
    default_layer=32,
    layer_paths=tuple(f"blocks.{i}.attn1" for i in range(40)),
    adapter="cameo.backbones.hunyuan_dit:HunyuanDiT",
    parameters=HunyuanOptions,
    blocks=("blocks",),
)
