"""The camera conditioning every adapter shares (cameo_cli.conditioning)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cameo_cli.cameras import intrinsics_matrix, plucker_raymap
from cameo_cli.conditioning import (
    ViewConditioning,
    added_to_output,
    camera_condition_maps,
    camera_patch_tokens,
    zero_conv,
)


def make_cond(drop: list[bool] | None) -> ViewConditioning:
    generator = torch.Generator().manual_seed(0)
    K = intrinsics_matrix(*(torch.tensor(v).expand(2, 3) for v in (30.0, 32.0, 16.0, 15.0)))
    w2c = torch.eye(4).repeat(2, 3, 1, 1)
    w2c[..., :3, 3] = torch.randn(2, 3, 3, generator=generator)
    ref_mask = torch.tensor([[True, False, False], [True, True, False]])
    drop_camera = None if drop is None else torch.tensor(drop)
    return ViewConditioning(K, w2c, ref_mask, (32, 32), drop_camera=drop_camera)


@pytest.mark.parametrize("drop", [None, [False, True]])
def test_maps_are_the_raymap_then_the_reference_mask(drop):
    cond = make_cond(drop)
    maps = camera_condition_maps(cond, 4, 6)
    assert maps.shape == (2, 3, 7, 4, 6) and maps.dtype == torch.float32
    raymap = plucker_raymap(cond.intrinsics, cond.world_to_camera, 4, 6, image_size=(32, 32))
    torch.testing.assert_close(maps[0, :, :6], raymap[0], rtol=0, atol=0)
    if drop is None:
        torch.testing.assert_close(maps[1, :, :6], raymap[1], rtol=0, atol=0)
    else:
        assert maps[1, :, :6].abs().max() == 0
    expected_mask = cond.ref_mask.float()[:, :, None, None].expand(2, 3, 4, 6)
    assert torch.equal(maps[:, :, 6], expected_mask)  # kept when the camera is dropped


def test_patch_tokens_follow_the_patch_order():
    cond = make_cond([False, False])
    encoder = zero_conv(7, 5, 2, stride=2)
    assert encoder.weight.abs().max() == 0 and encoder.bias.abs().max() == 0
    with torch.no_grad():
        encoder.weight.normal_()
    tokens = camera_patch_tokens(encoder, cond, 4, 6)
    assert tokens.shape == (6, 2 * 3, 5)
    maps = camera_condition_maps(cond, 4, 6).flatten(0, 1)
    patch = maps[:, :, 2:4, 4:6]  # patch row 1, column 2 -> token 1·3 + 2
    expected = torch.einsum("bchw,ochw->bo", patch, encoder.weight) + encoder.bias
    torch.testing.assert_close(tokens[:, 5], expected)


def test_added_to_output_only_inside_the_block_and_after_errors():
    layer = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    plain = layer(x)
    with added_to_output(layer, torch.ones(2, dtype=torch.float64)):
        shifted = layer(x)
    assert shifted.dtype == plain.dtype
    torch.testing.assert_close(shifted, plain + 1)
    with pytest.raises(RuntimeError), added_to_output(layer, torch.ones(2)):
        layer(torch.randn(4, 5))
    assert not layer._forward_hooks
    assert torch.equal(layer(x), plain)


def test_view_conditioning_is_still_importable_from_backbone():
    """Plugins written against cameo 0.1 import it from `cameo_cli.backbone` (re-exported)."""
    from cameo_cli import backbone

    assert backbone.ViewConditioning is ViewConditioning
    assert ViewConditioning.__module__ == "cameo_cli.conditioning"
