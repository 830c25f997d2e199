"""The multi-view attention processor against diffusers' stock processor and float64 math."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from cameo_cli.attention import LayerHook, MultiViewAttnProcessor, install_processors

B, F, HW, C, HEADS = 2, 4, 16, 32, 2


def make_layer(multiview: bool, qk_norm: str | None = None, seed: int = 0):
    torch.manual_seed(seed)
    attn = Attention(query_dim=C, heads=HEADS, dim_head=C // HEADS, qk_norm=qk_norm, bias=True)
    for parameter in attn.parameters():  # non-trivial norms and biases
        torch.nn.init.normal_(parameter, std=0.3)
    hook = LayerHook(index=0, path="attn", multiview=multiview, num_views=F)
    attn.set_processor(MultiViewAttnProcessor(hook))
    return attn, hook


def manual_attention_f64(attn: Attention, x: torch.Tensor, views: int) -> torch.Tensor:
    """Softmax attention in float64 over the views of each sample joined into one sequence."""
    layer = copy.deepcopy(attn).double()
    x = x.double()
    heads, d = layer.heads, layer.inner_dim // layer.heads

    def split(t: torch.Tensor) -> torch.Tensor:  # [B·F, hw, H·d] -> [B, H, F·hw, d]
        t = t.view(-1, views, t.shape[1], heads, d).permute(0, 3, 1, 2, 4)
        return t.flatten(2, 3)

    q, k, v = split(layer.to_q(x)), split(layer.to_k(x)), split(layer.to_v(x))
    if layer.norm_q is not None:
        q, k = layer.norm_q(q), layer.norm_k(k)
    weights = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
    out = (weights @ v).unflatten(2, (views, -1)).permute(0, 2, 3, 1, 4)  # B, F, hw, H, d
    out = out.reshape(x.shape[0], x.shape[1], heads * d)
    return layer.to_out[0](out) / layer.rescale_output_factor


@pytest.mark.parametrize("qk_norm", [None, "layer_norm"])
def test_single_view_bit_identical_to_stock(qk_norm):
    attn, hook = make_layer(multiview=True, qk_norm=qk_norm)
    hook.num_views = 1
    stock = copy.deepcopy(attn)
    stock.set_processor(AttnProcessor2_0())
    x = torch.randn(B * F, HW, C)
    assert torch.equal(attn(x), stock(x))
    image = torch.randn(B, C, 4, 4)  # the 4D (conv feature map) input path
    assert torch.equal(attn(image), stock(image))


@pytest.mark.parametrize("qk_norm", [None, "layer_norm"])
def test_multiview_layer_matches_float64_attention_over_all_views(qk_norm):
    attn, _ = make_layer(multiview=True, qk_norm=qk_norm)
    x = torch.randn(B * F, HW, C)
    expected = manual_attention_f64(attn, x, views=F)
    assert (attn(x).double() - expected).abs().max() < 1e-5
    # and it is not per-view attention
    per_view = manual_attention_f64(attn, x, views=1)
    assert (attn(x).double() - per_view).abs().max() > 1e-3


def test_per_view_layer_matches_float64_per_view_attention():
    attn, _ = make_layer(multiview=False)
    x = torch.randn(B * F, HW, C)
    assert (attn(x).double() - manual_attention_f64(attn, x, views=1)).abs().max() < 1e-5


def _changed_views(attn: Attention, sample: int, view: int) -> torch.Tensor:
    x = torch.randn(B * F, HW, C)
    y = x.clone()
    y[sample * F + view] += 1.0
    return (attn(x) - attn(y)).abs().amax(dim=(1, 2)).view(B, F) > 1e-6


def test_changing_one_view_changes_its_sample_only():
    attn, _ = make_layer(multiview=True)
    changed = _changed_views(attn, sample=1, view=2)
    assert changed[1].all() and not changed[0].any()


def test_per_view_layer_stays_per_view():
    attn, _ = make_layer(multiview=False)
    changed = _changed_views(attn, sample=1, view=2)
    expected = torch.zeros(B, F, dtype=torch.bool)
    expected[1, 2] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("multiview", [True, False])
def test_capture_gives_per_view_q_and_k(multiview):
    attn, hook = make_layer(multiview=multiview, qk_norm="layer_norm")
    x = torch.randn(B * F, HW, C)
    hook.recording = True
    attn(x)
    hook.recording = False
    ((q, k, scale),) = hook.captured
    d = C // HEADS
    assert q.shape == k.shape == (B, F, HEADS, HW, d)
    assert scale == d**-0.5
    expected_q = attn.norm_q(attn.to_q(x).view(B, F, HW, HEADS, d).transpose(2, 3))
    expected_k = attn.norm_k(attn.to_k(x).view(B, F, HW, HEADS, d).transpose(2, 3))
    assert torch.allclose(q, expected_q, atol=1e-6) and torch.allclose(k, expected_k, atol=1e-6)


def test_identity_perturbation_outputs_projected_values():
    attn, hook = make_layer(multiview=True)
    x = torch.randn(B * F, HW, C)
    normal = attn(x)
    hook.identity = True
    perturbed = attn(x)
    assert torch.allclose(perturbed, attn.to_out[0](attn.to_v(x)), atol=1e-6)
    hook.identity = False
    assert torch.equal(attn(x), normal)


def test_num_views_must_divide_batch():
    attn, hook = make_layer(multiview=True)
    hook.num_views = 3
    with pytest.raises(ValueError, match="not a multiple"):
        attn(torch.randn(4, HW, C))


def test_install_keeps_other_processors_stock():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        layers_per_block=1,
    )
    before = {k: type(p) for k, p in unet.attn_processors.items()}
    paths = sorted(k[: -len(".processor")] for k in before if ".attn1." in k)
    hooks = [LayerHook(index=i, path=p, multiview=True) for i, p in enumerate(paths)]
    install_processors(unet, hooks)
    for key, processor in unet.attn_processors.items():
        if ".attn1." in key:
            assert isinstance(processor, MultiViewAttnProcessor)
        else:
            assert type(processor) is before[key]
    with pytest.raises(ValueError, match="no attention layer"):
        install_processors(unet, [LayerHook(index=0, path="nope.attn1", multiview=True)])
