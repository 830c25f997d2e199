"""The light description cameo reads to list this backbone (must not import torch)."""

from cameo_cli.registry import BackboneSpec

# DiT-XL/2: 28 blocks; layer 22 sits at the same relative depth (0.8) as Hunyuan-DiT's 32/40.
EXAMPLE_DIT = BackboneSpec(
    name="example-dit",
    description="Example plugin: DiT (adaLN-Zero, class-free) with 3D attention and raymaps",
    default_layer=22,
    layer_paths=tuple(f"transformer_blocks.{i}.attn1" for i in range(28)),
    adapter="cameo_example_backbone.dit:ExampleDiT",
)
