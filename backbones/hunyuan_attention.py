"""Multi-view self-attention for Hunyuan-DiT's `attn1` layers (used by `backbones.hunyuan_dit`).

Hunyuan-DiT's stock processor normalises q and k per head (LayerNorm) and rotates them with
a 2D RoPE given as a `(cos, sin)` pair over one image's token grid. This processor does the
same to each view (the F views of a sample are F consecutive batch items, so every view gets
the same 2D positions; views differ only by their cameras), or, with `view_rotary_emb` set
(the backbone's `view_positions: distinct`), rotates the F·hw tokens of a sample by their
positions on one canvas holding the views side by side; then hands q, k, v to cameo's
`multiview_attention`: the F·hw tokens of a sample attend to each other in ONE
`scaled_dot_product_attention` call, the probe sees q and k after norm and RoPE, and the
identity switch returns V.

With F = 1 every operation is the stock one on the same tensors, so the result is bit for
bit that of diffusers' `HunyuanAttnProcessor2_0`.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb

from cameo_cli.attention import LayerHook, multiview_attention


class HunyuanMultiViewProcessor:
    """Hunyuan-DiT self-attention (q/k norm, per-view 2D RoPE) across the views of a sample."""

    def __init__(self, hook: LayerHook) -> None:
        self.hook = hook
        # (cos, sin) [F·hw, d] for the views side by side; None: every view shares one grid
        self.view_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                f"layer {self.hook.index} ({self.hook.path}): the multi-view processor serves "
                "self-attention only (no encoder states, no attention mask)"
            )
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError(
                f"layer {self.hook.index} ({self.hook.path}): expected Hunyuan-DiT tokens "
                "[batch, hw, dim] without spatial or group norm"
            )
        batch, tokens, _ = hidden_states.shape
        heads = attn.heads
        head_dim = attn.inner_dim // heads

        def split_heads(projected: torch.Tensor) -> torch.Tensor:  # -> [batch, heads, hw, d]
            return projected.view(batch, tokens, heads, head_dim).transpose(1, 2)

        query = split_heads(attn.to_q(hidden_states))
        key = split_heads(attn.to_k(hidden_states))
        value = split_heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if self.view_rotary_emb is not None:
            query, key = self._rotate_views(query), self._rotate_views(key)
        elif image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)

        out = multiview_attention(self.hook, query, key, value)
        out = out.transpose(1, 2).reshape(batch, tokens, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    def _rotate_views(self, tensor: torch.Tensor) -> torch.Tensor:
        """[B·F, heads, hw, d] rotated by `view_rotary_emb` over each sample's F·hw tokens."""
        samples = self.hook.split_views(tensor.shape[0])
        views = tensor.unflatten(0, (samples, -1)).transpose(1, 2)  # [B, heads, F, hw, d]
        rotated = apply_rotary_emb(views.flatten(2, 3), self.view_rotary_emb)
        return rotated.unflatten(2, views.shape[2:4]).transpose(1, 2).flatten(0, 1)
