"""Multi-view self-attention for Hunyuan-DiT's `attn1` layers.

Hunyuan-DiT's stock processor normalises q and k per head (LayerNorm) and rotates them with
a 2D RoPE given as a `(cos, sin)` pair over one image's token grid. This processor does the
same to every view, then lets the F·hw tokens of a sample attend to each other in ONE
`scaled_dot_product_attention` call. The F views of a sample arrive as F consecutive batch
items, so a sample's tokens are contiguous in memory and the RoPE of one view's grid, tiled
F times, gives every view the same 2D positions (views differ only by their cameras).

With F = 1 every operation is the stock one on the same tensors, so the result is bit for
bit that of diffusers' `HunyuanAttnProcessor2_0`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb

from cameo_cli.attention.hooks import LayerHook


class HunyuanMultiViewProcessor:
    """Self-attention over all views of a sample, with Hunyuan's q/k norm and per-view RoPE.

    Reports q and k (after norm and RoPE) to `hook.capture` as [B, F, heads, hw, d] and
    returns V through the output projection (PAG's identity attention) when
    `hook.identity` is set. A layer the hook marks per-view attends within each view only.
    """

    def __init__(self, hook: LayerHook) -> None:
        self.hook = hook

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
                f"{self.hook.path}: the multi-view processor serves self-attention only "
                "(no encoder states, no attention mask)"
            )
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError(f"{self.hook.path}: expected Hunyuan-DiT tokens [batch, hw, dim]")
        items, tokens_per_view, _ = hidden_states.shape
        num_views = self.hook.num_views
        if items % num_views:
            raise ValueError(
                f"{self.hook.path}: batch of {items} views is not a multiple of "
                f"num_views={num_views}"
            )
        # Views attending together: all F of a sample on a multi-view layer, else one.
        group = num_views if self.hook.multiview else 1
        samples = items // group
        heads = attn.heads
        head_dim = attn.to_v.out_features // heads
        residual = hidden_states

        def split_heads(projected: torch.Tensor) -> torch.Tensor:
            # [items, hw, heads·d] is laid out as [samples, group·hw, heads·d] in memory.
            return projected.view(samples, group * tokens_per_view, heads, head_dim).transpose(
                1, 2
            )

        value = split_heads(attn.to_v(hidden_states))
        if self.hook.identity and not self.hook.recording:
            attended = value
        else:
            query = split_heads(attn.to_q(hidden_states))
            key = split_heads(attn.to_k(hidden_states))
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            if image_rotary_emb is not None:
                cos, sin = image_rotary_emb
                tiled = (cos.repeat(group, 1), sin.repeat(group, 1)) if group > 1 else (cos, sin)
                query = apply_rotary_emb(query, tiled)
                key = apply_rotary_emb(key, tiled)
            self.hook.capture(
                _per_view(query, group, num_views), _per_view(key, group, num_views), head_dim**-0.5
            )
            if self.hook.identity:
                attended = value
            else:
                attended = F.scaled_dot_product_attention(
                    query, key, value, dropout_p=0.0, is_causal=False
                )
        out = attended.transpose(1, 2).reshape(items, tokens_per_view, heads * head_dim)
        out = out.to(value.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _per_view(x: torch.Tensor, group: int, num_views: int) -> torch.Tensor:
    """[samples, heads, group·hw, d] -> [B, F, heads, hw, d], where B·F = samples·group."""
    samples, heads, tokens, head_dim = x.shape
    per_view = x.view(samples, heads, group, tokens // group, head_dim).transpose(1, 2)
    return per_view.reshape(-1, num_views, heads, tokens // group, head_dim)
