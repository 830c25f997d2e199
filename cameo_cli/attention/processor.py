"""Multi-view self-attention for diffusers `Attention` modules (the `attn1` of a U-Net).

The U-Net runs the F views of a sample as F consecutive batch items `[B·F, hw, C]`. On a
multi-view layer the processor joins them into one sequence of F·hw tokens per sample and
runs `scaled_dot_product_attention` over it; on a per-view layer it attends within each
view, exactly like diffusers' stock `AttnProcessor2_0`. Both report q and k to the layer's
`LayerHook` (probe) and honour its identity switch (perturbation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cameo_cli.attention.hooks import LayerHook


def multiview_attention(
    hook: LayerHook,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of `[B·F, heads, hw, d]` tensors, views joined when the layer is multi-view.

    Reports q and k as `[B, F, heads, hw, d]` to `hook`, returns V when `hook.identity` is
    set, and otherwise `[B·F, heads, hw, d]` from SDPA. `scale=None` is SDPA's 1/sqrt(d).
    Shared by every cameo processor (the DiT's included) so that probe and perturbation
    behave the same on all backbones.
    """
    views = hook.num_views
    hook.split_views(query.shape[0])
    head_dim = query.shape[-1]
    hook.capture(
        rearrange(query, "(b f) h n d -> b f h n d", f=views),
        rearrange(key, "(b f) h n d -> b f h n d", f=views),
        head_dim**-0.5 if scale is None else scale,
    )
    if hook.identity:
        return value
    if not hook.multiview or views == 1:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=False, scale=scale
        )
    if attn_mask is not None:
        raise ValueError(f"layer {hook.index} ({hook.path}): multi-view attention takes no mask")

    def join(x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "(b f) h n d -> b h (f n) d", f=views)

    out = F.scaled_dot_product_attention(
        join(query), join(key), join(value), dropout_p=0.0, is_causal=False, scale=scale
    )
    return rearrange(out, "b h (f n) d -> (b f) h n d", f=views)


class MultiViewAttnProcessor:
    """diffusers processor for a self-attention `Attention`: per-view or across views.

    Keeps what `AttnProcessor2_0` does (spatial/group norm, q/k norm, residual,
    `rescale_output_factor`, `to_out`); with one view it computes the very same operations.
    """

    def __init__(self, hook: LayerHook) -> None:
        self.hook = hook

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError(
                f"layer {self.hook.index} ({self.hook.path}): cameo's processor is for "
                "self-attention; got encoder_hidden_states"
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            height = hidden_states.shape[2]
            hidden_states = rearrange(hidden_states, "b c h w -> b (h w) c")
        batch, tokens, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        query, key, value = (
            rearrange(x, "b n (h d) -> b h n d", h=attn.heads) for x in (query, key, value)
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = multiview_attention(self.hook, query, key, value, attention_mask)
        hidden_states = rearrange(hidden_states, "b h n d -> b n (h d)")
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = rearrange(hidden_states, "b (h w) c -> b c h w", h=height)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_processors(
    model: nn.Module,
    hooks: list[LayerHook],
    make_processor: type = MultiViewAttnProcessor,
) -> None:
    """Give every hooked layer of `model` a cameo processor; other layers keep theirs.

    diffusers' `set_attn_processor` with a dict needs every key, so the dict is built from
    the model's current processors with the hooked ones replaced.
    """
    processors = dict(model.attn_processors)
    for hook in hooks:
        key = f"{hook.path}.processor"
        if key not in processors:
            raise ValueError(f"model has no attention layer '{hook.path}'")
        processors[key] = make_processor(hook)
    model.set_attn_processor(processors)


def add_qk_norm(model: nn.Module, hooks: list[LayerHook], eps: float = 1e-5) -> list[str]:
    """Give every hooked attention of `model` a q/k LayerNorm over the head dim (the official
    CAMEO default, with its eps 1e-5; `MultiViewAttnProcessor` applies `norm_q`/`norm_k`).
    Returns the new modules' paths, which adapters declare in `model_additions` (diffusers
    does not record them)."""
    paths = []
    for hook in hooks:
        attn = model.get_submodule(hook.path)
        head_dim = attn.inner_dim // attn.heads
        attn.norm_q = nn.LayerNorm(head_dim, eps=eps)
        attn.norm_k = nn.LayerNorm(head_dim, eps=eps)
        paths += [f"{hook.path}.norm_q", f"{hook.path}.norm_k"]
    return paths
