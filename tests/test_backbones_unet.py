"""The U-Net adapters (cat3d, mvgenmaster): layers, probe, zero-init, saving, priors."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from cameo.backbones import CAT3D, MVGENMASTER
from cameo.backbones.cat3d import TINY_UNET, Cat3D, remove_cross_attention
from cameo.backbones.mvgenmaster import (
    MVGenMaster,
    contract_depth,
    forward_warp,
    fourier_features,
    normalise_points,
)
from cameo_cli.backbone import ViewConditioning
from cameo_cli.cameras import intrinsics_matrix, unproject_depth
from cameo_cli.errors import CameoError

ADAPTERS = {"cat3d": Cat3D, "mvgenmaster": MVGenMaster}
SIZE = 32  # image and latent size of the tests (tiny models, `downsample` 1)


def pixel_K(focal: float, center: float) -> torch.Tensor:
    f, c = torch.tensor(focal), torch.tensor(center)
    return intrinsics_matrix(f, f, c, c)


def orbit_cameras(batch: int, views: int, seed: int = 0) -> torch.Tensor:
    """[B, F, 4, 4] w2c looking roughly at the origin from distance ~3, jittered per sample."""
    generator = torch.Generator().manual_seed(seed)
    w2c = torch.eye(4).repeat(batch, views, 1, 1)
    angles = torch.linspace(0, 0.6, views)[None] + 0.1 * torch.rand(
        batch, views, generator=generator
    )
    cos, sin = angles.cos(), angles.sin()
    w2c[..., 0, 0], w2c[..., 0, 2], w2c[..., 2, 0], w2c[..., 2, 2] = cos, -sin, sin, cos
    w2c[..., 2, 3] = 3.0
    return w2c


def make_cond(batch: int, views: int, geometry: bool = True, seed: int = 0) -> ViewConditioning:
    K = pixel_K(SIZE * 1.2, SIZE / 2).expand(batch, views, 3, 3)
    w2c = orbit_cameras(batch, views, seed)
    ref_mask = torch.zeros(batch, views, dtype=torch.bool)
    ref_mask[:, 0] = True
    cond = ViewConditioning(K.clone(), w2c, ref_mask, (SIZE, SIZE))
    if geometry:
        generator = torch.Generator().manual_seed(seed)
        depth = 2.5 + 0.5 * torch.rand(batch, views, SIZE, SIZE, generator=generator)
        cond.point_map = unproject_depth(depth, K, w2c)
        cond.point_valid = torch.ones(batch, views, SIZE, SIZE, dtype=torch.bool)
        cond.ref_images = torch.rand(batch, views, 3, SIZE, SIZE, generator=generator) * 2 - 1
    return cond


def build(name: str, **options) -> Cat3D:
    torch.manual_seed(0)
    model = ADAPTERS[name].build("tiny", in_channels=4, downsample=1, **options)
    return model.eval()


def randomize_condition_encoder(model: Cat3D) -> None:
    with torch.no_grad():
        model.condition_encoder.weight.normal_(std=0.05)
        model.condition_encoder.bias.normal_(std=0.05)


def stock_copy(model: Cat3D) -> UNet2DConditionModel:
    """The wrapped U-Net with diffusers' stock processor on every attention."""
    unet = copy.deepcopy(model.model)
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


def inputs(batch: int, views: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, views, 4, SIZE, SIZE, generator=generator)
    return latents, torch.rand(batch, generator=generator) * 999


def build_and_run(name: str, views: int):
    """A fresh adapter, its inputs (latents, timesteps, conditioning) for 2 samples of
    `views` views, and its output on them."""
    model = build(name)
    latents, timesteps = inputs(2, views)
    cond = make_cond(2, views)
    with torch.no_grad():
        return model, (latents, timesteps, cond), model(latents, timesteps, cond)


# -- layer tables ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [CAT3D, MVGENMASTER], ids=lambda s: s.name)
def test_full_layer_table_at_512(spec):
    with torch.device("meta"):
        model = spec.load_adapter().build("full")
    table = model.layers(512)  # paths and flags against the spec: test_backbones_spec
    assert model.default_layer == spec.default_layer == 10
    ten = table[10]
    assert ten.path == "up_blocks.2.attentions.0.transformer_blocks.0.attn1" and ten.default
    assert (ten.grid, ten.heads, ten.head_dim) == ((32, 32), 10, 64)
    assert {layer.index for layer in table if not layer.multiview} == {0, 1, 13, 14, 15}
    assert {layer.grid for layer in table if not layer.multiview} == {(64, 64)}
    assert table[6].grid == (8, 8) and table[6].heads == 20
    # the official numbering (attn_processor_cache.py 27-34): the U-Net's self-attention
    # modules in sorted name order once the text cross-attention is gone
    unet = model.model
    assert [layer.path for layer in table] == sorted(
        name for name, module in unet.named_modules() if name.endswith(".attn1")
    )
    assert not any(name.endswith(".attn2") for name, _ in unet.named_modules())


@pytest.mark.parametrize("name", ADAPTERS)
def test_tiny_build_and_token_grid_matches_forward(name):
    start = time.perf_counter()
    model = ADAPTERS[name].build("tiny", in_channels=3)  # pixel space: downsample 1
    assert time.perf_counter() - start < 2.0
    assert 3.0e6 < sum(p.numel() for p in model.model.parameters()) < 3.5e6
    assert len(model.hooks) == 16 and model.multiview_layers == set(range(2, 13))
    seen = {}
    handles = [
        model.model.get_submodule(hook.path).register_forward_pre_hook(
            lambda module, args, index=hook.index: seen.__setitem__(index, args[0].shape[1])
        )
        for hook in model.hooks
    ]
    latents = torch.randn(1, 2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert model(latents, torch.tensor([5.0]), make_cond(1, 2)).shape == latents.shape
    for handle in handles:
        handle.remove()
    for hook in model.hooks:
        height, width = model.token_grid(hook.index, (SIZE, SIZE))
        assert seen[hook.index] == height * width


def test_layer_out_of_range_names_the_valid_range():
    model = build("cat3d")
    with pytest.raises(CameoError) as error:
        model.check_layer(16)
    assert error.value.message == "layer 16 is outside backbone 'cat3d' (valid: 0-15), default 10"
    with pytest.raises(CameoError, match="outside"):
        with model.probe(-1, (8, 8)):
            pass


def test_unknown_option_and_variant_are_user_errors():
    with pytest.raises(CameoError, match="unknown options"):
        Cat3D.build("tiny", heads=3)
    with pytest.raises(CameoError, match="unknown config"):
        Cat3D.build("huge")


# -- equivalence with diffusers and zero initialisation -------------------------------------
@pytest.mark.parametrize("name", ADAPTERS)
def test_single_view_equals_stock_diffusers_unet(name):
    model, (latents, timesteps, _), ours = build_and_run(name, views=1)
    with torch.no_grad():
        stock = stock_copy(model)(latents.flatten(0, 1), timesteps, None).sample
    assert torch.equal(ours.flatten(0, 1), stock)


@pytest.mark.parametrize("name", ADAPTERS)
def test_conditioning_is_zero_at_init(name):
    model, (latents, timesteps, cond), conditioned = build_and_run(name, views=3)
    with torch.no_grad():
        model.set_num_views(3)
        plain = model.model(latents.flatten(0, 1), timesteps.repeat_interleave(3), None).sample
        assert torch.equal(conditioned.flatten(0, 1), plain)
        randomize_condition_encoder(model)  # the check can fail: conditioning is wired in
        assert (model(latents, timesteps, cond) - conditioned).abs().max() > 1e-4


def test_drop_camera_removes_camera_dependence_per_sample():
    model = build("cat3d")
    randomize_condition_encoder(model)
    latents, timesteps = inputs(2, 3)
    cond, moved = make_cond(2, 3, seed=0), make_cond(2, 3, seed=1)
    with torch.no_grad():
        a, b = model(latents, timesteps, cond), model(latents, timesteps, moved)
        assert (a - b).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-5  # cameras matter
        for c in (cond, moved):
            c.drop_camera = torch.tensor([True, False])
        a, b = model(latents, timesteps, cond), model(latents, timesteps, moved)
    assert torch.equal(a[0], b[0]) and (a[1] - b[1]).abs().max() > 1e-5


# -- multi-view attention in the whole model ------------------------------------------------
def test_changing_one_view_changes_its_sample_only():
    model = build("cat3d")
    latents, timesteps = inputs(2, 3)
    cond = make_cond(2, 3)
    changed = latents.clone()
    changed[1, 2] += 0.5
    with torch.no_grad():
        diff = (model(latents, timesteps, cond) - model(changed, timesteps, cond)).abs()
    per_view = diff.amax(dim=(2, 3, 4))
    assert (per_view[1] > 1e-5).all() and (per_view[0] == 0).all()


# -- probe ----------------------------------------------------------------------------------
def _record_layer(model: Cat3D, layer: int) -> tuple[dict, list]:
    attn = model.model.get_submodule(model.hooks[layer].path)
    seen: dict = {}
    handles = [
        attn.register_forward_pre_hook(lambda m, args: seen.__setitem__("input", args[0])),
        attn.to_out[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("sdpa", args[0])),
    ]
    return seen, handles


@pytest.mark.parametrize("layer", [10, 0])  # a multi-view and a per-view layer
def test_probe_logits_equal_recomputation_and_softmax_rows(layer):
    model = build("cat3d")
    for parameter in model.model.parameters():  # non-trivial q/k norms
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    views, batch = 3, 2
    latents, timesteps = inputs(batch, views)
    seen, handles = _record_layer(model, layer)
    grid = model.token_grid(layer, (SIZE, SIZE))
    with torch.no_grad(), model.probe(layer, grid) as handle:
        model(latents, timesteps, make_cond(batch, views))
    for h in handles:
        h.remove()
    probe = handle.result
    attn = model.model.get_submodule(model.hooks[layer].path)
    heads, d = attn.heads, attn.inner_dim // attn.heads
    hw = grid[0] * grid[1]
    x = seen["input"]  # [B·F, hw, C]

    def per_head(t):
        return t.view(batch, views, hw, heads, d).transpose(2, 3)

    q, k, v = (
        attn.norm_q(per_head(attn.to_q(x))),
        attn.norm_k(per_head(attn.to_k(x))),
        per_head(attn.to_v(x)),
    )
    assert probe.q.shape == (batch, views, heads, hw, d) and probe.scale == d**-0.5
    for i, j in [(0, 1), (2, 0), (1, 1)]:
        expected = q[:, i] @ k[:, j].transpose(-1, -2) / math.sqrt(d)
        assert (probe.logits(i, j) - expected).abs().max() <= 1e-6
    rows = torch.tensor([0, 5, hw - 1])
    sdpa = seen["sdpa"].view(batch, views, hw, heads, d).transpose(2, 3)
    key_views = range(views) if layer in model.multiview_layers else None
    for i in range(views):
        keys = key_views if key_views is not None else [i]
        logits = torch.cat([probe.logits(i, j, rows) for j in keys], dim=-1)
        values = torch.cat([v[:, j] for j in keys], dim=-2)
        expected = torch.softmax(logits, dim=-1) @ values
        assert (expected - sdpa[:, i][:, :, rows]).abs().max() <= 1e-5


def test_probe_gradient_reaches_earlier_layers_only():
    model = build("cat3d").train()
    latents, timesteps = inputs(1, 2)
    with model.probe(10, (16, 16)) as handle:
        model(latents, timesteps, make_cond(1, 2))
    handle.result.logits(0, 1).square().mean().backward()

    def grad_norm(path: str) -> float:
        grad = model.model.get_submodule(path).weight.grad
        return 0.0 if grad is None else grad.abs().sum().item()

    attn = "up_blocks.{}.attentions.{}.transformer_blocks.0.attn1.{}"
    assert grad_norm(attn.format(2, 0, "to_q")) > 0 and grad_norm(attn.format(2, 0, "to_k")) > 0
    assert grad_norm(attn.format(2, 0, "to_v")) == 0  # logits do not depend on V
    assert grad_norm(attn.format(1, 2, "to_q")) > 0 and grad_norm("conv_in") > 0  # earlier
    assert grad_norm(attn.format(2, 1, "to_q")) == 0 and grad_norm("conv_out") == 0  # later


def test_perturb_makes_layer_output_its_values():
    model = build("cat3d")
    latents, timesteps = inputs(1, 2)
    cond = make_cond(1, 2)
    seen, handles = _record_layer(model, 10)
    attn = model.model.get_submodule(model.hooks[10].path)
    with torch.no_grad():
        normal = model(latents, timesteps, cond)
        with model.perturb([10]):
            perturbed = model(latents, timesteps, cond)
            assert torch.allclose(seen["sdpa"], attn.to_v(seen["input"]), atol=1e-6)
        assert torch.equal(model(latents, timesteps, cond), normal)
    for h in handles:
        h.remove()
    assert (perturbed - normal).abs().max() > 1e-5
    with pytest.raises(CameoError, match="outside"):
        with model.perturb([3, 40]):
            pass


# -- saving and loading ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ADAPTERS)
def test_save_and_load_offline_identical(name, tmp_path, monkeypatch):
    from cameo_cli.registry import load_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build(name)
    with torch.no_grad():
        for parameter in model.parameters():  # trained-like: norms and encoder non-trivial
            parameter.add_(0.02 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path / "saved")
    latents, timesteps = inputs(1, 3)
    cond = make_cond(1, 3)
    for loaded in (
        ADAPTERS[name].from_pretrained(tmp_path / "saved"),
        load_backbone(tmp_path / "saved"),
    ):
        assert type(loaded) is type(model) and loaded.options == model.options
        loaded.eval()
        with torch.no_grad():
            assert torch.equal(loaded(latents, timesteps, cond), model(latents, timesteps, cond))
        assert all(p.attn2 is None for p in loaded.model.modules() if hasattr(p, "attn2"))


def test_missing_folders_are_user_errors(tmp_path):
    with pytest.raises(CameoError, match="does not exist"):
        Cat3D.from_pretrained(tmp_path / "nope")
    with pytest.raises(CameoError, match="does not exist"):
        Cat3D.build("full", pretrained=str(tmp_path / "nope"))
    build("cat3d").save_pretrained(tmp_path / "saved")
    with pytest.raises(CameoError, match="not 'mvgenmaster'"):
        MVGenMaster.from_pretrained(tmp_path / "saved")


def test_pretrained_diffusers_unet_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(1)
    source = UNet2DConditionModel(**TINY_UNET, in_channels=4, out_channels=4)
    source.save_pretrained(tmp_path / "sd" / "unet")  # pipeline layout, with text cross-attn
    model = Cat3D.build("tiny", pretrained=str(tmp_path / "sd"), qk_norm=False, downsample=1)
    weights = source.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in model.model.state_dict().items())
    # reference: diffusers' own load of the folder (same memory layout), attn2 removed
    stock = UNet2DConditionModel.from_pretrained(tmp_path / "sd" / "unet", local_files_only=True)
    remove_cross_attention(stock)
    latents, timesteps = inputs(1, 1)
    with torch.no_grad():
        ours = model.eval()(latents, timesteps, make_cond(1, 1))
        assert torch.equal(ours[:, 0], stock.eval()(latents[:, 0], timesteps, None).sample)
    with pytest.raises(CameoError, match="input channels"):
        Cat3D.build("tiny", in_channels=3, pretrained=str(tmp_path / "sd"))


# -- smoke ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ADAPTERS)
def test_smoke_forward_backward(name):
    model = build(name).train()
    latents, timesteps = inputs(2, 4)
    out = model(latents, timesteps, make_cond(2, 4))
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert out.shape == latents.shape and len(grads) > 100
    assert all(torch.isfinite(g).all() for g in grads)
    assert model.condition_encoder.weight.grad.abs().sum() > 0


# -- MVGenMaster's geometric priors ----------------------------------------------------------
def plane_scene(shift: float):
    """One reference camera at the origin seeing a fronto-parallel plane at z = 2, and a
    target camera moved by `shift` along x. 32 px images, K with f = 32, warped to 8 x 8."""
    K = pixel_K(32.0, 16.0).expand(1, 2, 3, 3)
    w2c = torch.eye(4).repeat(1, 2, 1, 1)
    w2c[0, 1, 0, 3] = -shift
    depth = torch.full((1, 1, 32, 32), 2.0)
    points = unproject_depth(depth, K[:, :1], w2c[:, :1])  # [1, 1, 3, 32, 32]
    colours = torch.rand(1, 1, 3, 32, 32)
    return K, w2c, points, colours


def flat(t: torch.Tensor) -> torch.Tensor:  # [1, V, 3, H, W] -> [1, V·H·W, 3]
    return t.permute(0, 1, 3, 4, 2).reshape(1, -1, 3)


def test_forward_warp_matches_analytic_shift():
    K, w2c, points, colours = plane_scene(shift=0.5)  # the plane moves by 2 cells of 4 px
    mask = torch.ones(1, 32 * 32, dtype=torch.bool)
    colour, world, valid = forward_warp(flat(colours), flat(points), mask, K, w2c, (8, 8), (32, 32))
    assert valid[0, 0].all()  # into itself: every cell hit by its top-left pixel (lowest index)
    assert torch.equal(colour[0, 0], colours[0, 0][:, ::4, ::4])
    assert torch.equal(world[0, 0], points[0, 0][:, ::4, ::4])
    # target cell column c sees source columns 4(c + 2) .. 4(c + 2) + 3
    assert valid[0, 1, :, :6].all() and not valid[0, 1, :, 6:].any()
    assert torch.equal(colour[0, 1][:, :, :6], colours[0, 0][:, ::4, 8::4])
    assert (colour[0, 1][:, :, 6:] == 0).all()


def test_forward_warp_z_buffer_keeps_nearest():
    K, w2c, far, colours = plane_scene(shift=0.0)
    near = far * 0.5  # the same rays at half the depth
    near_colours = -colours
    points = torch.cat([flat(far), flat(near)], dim=1)
    rgb = torch.cat([flat(colours), flat(near_colours)], dim=1)
    mask = torch.ones(1, 2 * 32 * 32, dtype=torch.bool)
    mask[0, 32 * 32 :] = (torch.arange(32 * 32) % 32) < 16  # near plane: left half only
    colour, _, valid = forward_warp(rgb, points, mask, K[:, :1], w2c[:, :1], (8, 8), (32, 32))
    assert valid.all()
    assert torch.equal(colour[0, 0][:, :, :4], near_colours[0, 0][:, ::4, :16:4])
    assert torch.equal(colour[0, 0][:, :, 4:], colours[0, 0][:, ::4, 16::4])


def test_priors_use_reference_views_only():
    model = build("mvgenmaster")
    cond = make_cond(1, 3)
    latents = torch.zeros(1, 3, 4, SIZE, SIZE)
    position, colour = model.position_prior(latents, cond), model.colour_prior(cond)
    assert position.shape == (1, 3, model.position_channels(), SIZE, SIZE)
    assert colour.shape == (1, 3, 4, SIZE, SIZE)
    changed = copy.deepcopy(cond)
    changed.ref_images[:, 1:] = 0.3  # target views' pixels must not leak into the priors
    changed.point_map[:, 1:] += 1.0
    assert torch.equal(model.position_prior(latents, changed), position)
    assert torch.equal(model.colour_prior(changed), colour)
    assert position[0, 0, -1].mean() > 0.9 and position[:, :, -1].sum() > 0  # validity
    cond.point_map = None
    assert not model.position_prior(latents, cond).any() and not model.colour_prior(cond).any()


def test_colour_prior_identity_camera_is_the_reference():
    """A target with the reference's own camera gets the reference's pixels, every one."""
    model = build("mvgenmaster")
    cond = make_cond(1, 2)
    cond.world_to_camera[:, 1] = cond.world_to_camera[:, 0]
    colour = model.colour_prior(cond)
    assert colour[0, :, 3].all()  # every pixel of both views is seen
    assert torch.equal(colour[0, 1, :3], cond.ref_images[0, 0].float())
    assert torch.equal(colour[0, 0, :3], cond.ref_images[0, 0].float())


def test_colour_prior_is_warped_at_pixel_resolution():
    """The plane scene shifted by 8 px: the target's columns 0-23 are the reference's 8-31
    pixel for pixel (latent-resolution point sampling would keep 1 pixel in 16)."""
    K, w2c, points, colours = plane_scene(shift=0.5)
    cond = ViewConditioning(K.clone(), w2c, torch.tensor([[True, False]]), (32, 32))
    cond.point_map = torch.cat([points, torch.zeros_like(points)], dim=1)
    cond.ref_images = torch.cat([colours * 2 - 1, torch.zeros_like(colours)], dim=1)
    colour = build("mvgenmaster").colour_prior(cond)
    assert torch.equal(colour[0, 1, :3, :, :24], cond.ref_images[0, 0, :, :, 8:])
    assert colour[0, 1, 3, :, :24].all() and not colour[0, 1, 3, :, 24:].any()


def test_depth_contraction_against_hand_computation():
    # valid depths 1, 2, 3, 100: median 2 (torch.median, as the release: the lower middle
    # value), limit 2 x 2 = 4; 100 -> 2 * 4 - 4^2 / 100 = 7.84, the others kept
    depth = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    valid = torch.ones(2, 2, dtype=torch.bool)
    expected = torch.tensor([[1.0, 2.0], [3.0, 7.84]])
    assert torch.allclose(contract_depth(depth, valid, 2.0), expected)
    # an invalid pixel is neither in the median nor contracted; 3 > limit 1 x 2 -> 4 - 4 / 3
    valid[1, 1] = False
    out = contract_depth(depth, valid, 1.0)
    assert out[1, 1] == 100.0 and out[0, 1] == 2.0
    assert math.isclose(out[1, 0].item(), 4 - 4 / 3, rel_tol=1e-6)


def test_normalise_points_against_hand_computation():
    # the point (2, -1, 5): min -1, max 5 -> (3/6, 0, 1); the release's min/max over x, y, z
    points = torch.tensor([2.0, -1.0, 5.0]).view(3, 1, 1)
    expected = torch.tensor([0.5, 0.0, 1.0])
    assert torch.allclose(normalise_points(points).flatten(), expected, atol=1e-6)


def test_prior_dropout_is_element_wise_reproducible_and_position_only():
    model = build("mvgenmaster", prior_drop=0.5).train()
    latents = torch.zeros(1, 3, 4, SIZE, SIZE)
    cond = make_cond(1, 3)
    clean = copy.deepcopy(model).eval().position_prior(latents, cond)
    draws = []
    for seed, global_seed in ((7, 0), (7, 1), (8, 1)):
        torch.manual_seed(global_seed)  # torch's global RNG plays no part
        cond.generator = torch.Generator().manual_seed(seed)
        draws.append(model.position_prior(latents, cond))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    kept = draws[0] != 0
    assert torch.allclose(draws[0][kept], 2 * clean[kept])  # inverted scaling 1 / (1 - p)
    dropped = (clean != 0) & ~kept
    fraction = dropped.sum() / (clean != 0).sum()
    assert 0.4 < fraction < 0.6  # element-wise, not whole samples
    assert dropped[0, 0].any() and kept[0, 0].any()  # within one view
    cond.generator = torch.Generator().manual_seed(7)
    assert torch.equal(model.colour_prior(cond), copy.deepcopy(model).eval().colour_prior(cond))
    assert not build("mvgenmaster", prior_drop=1.0).train().position_prior(latents, cond).any()


def test_fourier_features_values():
    coords = torch.tensor([0.25, -0.5, 1.0]).view(3, 1, 1)
    encoded = fourier_features(coords, 2).flatten()
    angles = torch.tensor([0.25, -0.5, 1.0, 0.5, -1.0, 2.0]) * math.pi
    assert torch.allclose(encoded, torch.cat([coords.flatten(), angles.sin(), angles.cos()]))


def test_probe_gradients_survive_gradient_checkpointing():
    model = build("cat3d").train()
    checkpointed = copy.deepcopy(model)
    checkpointed.enable_gradient_checkpointing()
    latents, timesteps = inputs(1, 2)
    grads = []
    for backbone in (model, checkpointed):
        with backbone.probe(10, (16, 16)) as handle:
            out = backbone(latents, timesteps, make_cond(1, 2))
        (handle.result.logits(0, 1).square().mean() + out.square().mean()).backward()
        grads.append({n: p.grad for n, p in backbone.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_bad_conditioning_shapes_are_reported():
    model = build("cat3d")
    latents, timesteps = inputs(1, 2)
    cond = make_cond(1, 3)
    with pytest.raises(ValueError, match="cond.intrinsics"):
        model(latents, timesteps, cond)
    with pytest.raises(ValueError, match="timesteps"):
        model(latents, timesteps.repeat(2), make_cond(1, 2))


def test_colour_prior_from_exact_synthetic_depth_reproduces_the_target(synthetic_dataset):
    """On a rendered scene with its exact depth, the reference warped into a target view is
    that view where it lands (the reprojection line), far above the reference copied as is."""
    from cameo_cli.batch import ViewBatch
    from cameo_cli.data.dataset import MultiViewDataset

    dataset = MultiViewDataset(synthetic_dataset, num_views=2, min_refs=1, max_refs=1)
    views = ViewBatch.from_item(dataset.get_views("synth-00000", [0, 1], 1))
    colour = build("mvgenmaster").colour_prior(ViewConditioning.from_batch(views))
    seen = colour[0, 1, 3] > 0
    truth = views.images[0, 1]

    def psnr(image: torch.Tensor) -> float:
        error = ((image - truth) / 2)[:, seen]
        return -10 * math.log10(error.square().mean().item())

    assert seen.float().mean() > 0.6
    assert psnr(colour[0, 1, :3]) > 22 and psnr(colour[0, 1, :3]) > psnr(views.images[0, 0]) + 5


def test_pretrained_cameo_backbone_folder_brings_its_own_modules(tmp_path, monkeypatch):
    """A saved cameo backbone as `pretrained` (a multi-view prior): the U-Net AND the camera
    encoder load, so it predicts as the saved model does; another build of it is refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build("cat3d")
    with torch.no_grad():
        for parameter in model.parameters():  # the camera encoder is no longer zero
            parameter.add_(0.02 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path / "prior")
    loaded = Cat3D.build(
        model.variant,
        in_channels=model.in_channels,
        pretrained=str(tmp_path / "prior"),
        **model.options,
    )
    latents, timesteps = inputs(1, 3)
    cond = make_cond(1, 3)
    with torch.no_grad():
        assert torch.equal(
            loaded.eval()(latents, timesteps, cond), model.eval()(latents, timesteps, cond)
        )
    other = {**model.options, "qk_norm": not model.options["qk_norm"]}
    with pytest.raises(CameoError, match="saved with options"):
        Cat3D.build(
            model.variant,
            in_channels=model.in_channels,
            pretrained=str(tmp_path / "prior"),
            **other,
        )
