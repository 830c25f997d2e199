"""Hunyuan-DiT backbone: multi-view attention against diffusers and float64 references."""

from __future__ import annotations

import time

import pytest
import torch
from diffusers import HunyuanDiT2DModel
from diffusers.models.attention_processor import HunyuanAttnProcessor2_0

from benchmarks.rope_positions import plant_positional
from cameo.backbones import HUNYUAN_DIT
from cameo.backbones.hunyuan_attention import HunyuanMultiViewProcessor
from cameo.backbones.hunyuan_dit import VARIANTS, HunyuanDiT
from cameo_cli.attention.hooks import LayerHook
from cameo_cli.backbone import ViewConditioning
from cameo_cli.conditioning import camera_condition_maps
from cameo_cli.errors import CameoError

SIZE = 32  # latents of 32 x 32 -> 16 x 16 tokens per view (patch 2)


def make_backbone(in_channels: int = 4, seed: int = 0) -> HunyuanDiT:
    torch.manual_seed(seed)
    return HunyuanDiT.build("tiny", in_channels=in_channels).eval()


def make_cond(batch: int, views: int, seed: int = 1, drop=None) -> ViewConditioning:
    generator = torch.Generator().manual_seed(seed)
    K = torch.tensor([[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]])
    angles = torch.rand(batch, views, generator=generator) - 0.5
    w2c = torch.eye(4).repeat(batch, views, 1, 1)
    w2c[..., 0, 0], w2c[..., 0, 2] = angles.cos(), angles.sin()
    w2c[..., 2, 0], w2c[..., 2, 2] = -angles.sin(), angles.cos()
    w2c[..., :3, 3] = torch.randn(batch, views, 3, generator=generator)
    ref_mask = torch.zeros(batch, views, dtype=torch.bool)
    ref_mask[:, 0] = True
    return ViewConditioning(
        intrinsics=K.expand(batch, views, 3, 3),
        world_to_camera=w2c,
        ref_mask=ref_mask,
        image_size=(SIZE, SIZE),
        drop_camera=drop,
    )


def randomize_camera_encoder(backbone: HunyuanDiT) -> None:
    with torch.no_grad():
        backbone.camera_encoder.weight.normal_(0.0, 0.5)
        backbone.camera_encoder.bias.normal_(0.0, 0.5)


def stock_copy(backbone: HunyuanDiT) -> HunyuanDiT2DModel:
    """An independent diffusers model with the same weights and stock processors."""
    stock = HunyuanDiT2DModel(**backbone.model.config)
    stock.load_state_dict(backbone.model.state_dict())
    return stock.eval()


def stock_forward(backbone: HunyuanDiT, stock: HunyuanDiT2DModel, latents, timesteps):
    """The unconditioned DiT per image, with the adapter's null text/size/style inputs."""
    items, channels, height, width = latents.shape
    nulls = backbone.null_conditions(items, (SIZE, SIZE), latents.dtype, latents.device)
    rope = backbone.rotary_embedding(height // 2, width // 2, latents.device)
    out = stock(latents, timesteps, image_rotary_emb=rope, return_dict=False, **nulls)[0]
    return out[:, :channels]


def reference_rope(
    grid_h: int, grid_w: int, head_dim: int, col_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 2D RoPE written from its definition: first half of each head rotates by the
    column index (+ `col_offset`), second half by the row index, frequencies
    10000^(-k / (d/4)), adjacent channel pairs rotate together. Returns (angle cos, angle
    sin) [hw, d/2] per pair."""
    quarter = head_dim // 4
    freqs = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    angles = torch.cat(
        [(cols.reshape(-1, 1) + col_offset) * freqs, rows.reshape(-1, 1) * freqs], dim=1
    )  # [hw, d/2]
    return angles.cos(), angles.sin()


def reference_qkv(attn, hidden: torch.Tensor, grid: tuple[int, int], col_offset: int = 0):
    """Float64 q (normed + rotated), k (normed + rotated), v: [N, heads, hw, d]."""
    heads = attn.heads
    x = hidden.double()

    def project(linear):
        out = x @ linear.weight.double().T + linear.bias.double()
        return out.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    def layer_norm(t, norm):
        mean = t.mean(-1, keepdim=True)
        var = t.var(-1, unbiased=False, keepdim=True)
        return (t - mean) / torch.sqrt(var + norm.eps) * norm.weight.double() + norm.bias.double()

    cos, sin = reference_rope(*grid, attn.to_q.out_features // heads, col_offset)

    def rotate(t):
        pairs = t.unflatten(-1, (-1, 2))
        first, second = pairs[..., 0], pairs[..., 1]
        return torch.stack(
            [first * cos - second * sin, first * sin + second * cos], dim=-1
        ).flatten(-2)

    q = rotate(layer_norm(project(attn.to_q), attn.norm_q))
    k = rotate(layer_norm(project(attn.to_k), attn.norm_k))
    return q, k, project(attn.to_v)


def capture_layer_input(backbone: HunyuanDiT, layer: int) -> dict:
    """Record the hidden states entering `blocks.{layer}.attn1` and the attention result
    entering its output projection."""
    attn = backbone.model.blocks[layer].attn1
    seen: dict = {}
    attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.__setitem__("hidden", args[0].detach()),
        with_kwargs=True,
    )
    attn.to_out[0].register_forward_pre_hook(
        lambda module, args: seen.__setitem__("attended", args[0].detach())
    )
    return seen


# -- F = 1: exactly the stock diffusers model --------------------------------------------


def test_single_view_equals_stock_model():
    backbone = make_backbone()
    stock = stock_copy(backbone)
    latents = torch.randn(2, 1, 4, SIZE, SIZE)
    timesteps = torch.tensor([10.0, 700.0])
    with torch.no_grad():
        ours = backbone(latents, timesteps, make_cond(2, 1))
        theirs = stock_forward(backbone, stock, latents[:, 0], timesteps)
    assert theirs.abs().mean() > 0.1  # a real prediction, not a zero-initialised output
    assert (ours[:, 0] - theirs).abs().max() <= 1e-6


def test_single_view_processor_is_bit_identical_with_cameras():
    """With a non-zero camera encoder, swapping our attn1 processors for diffusers' stock
    one at F = 1 changes nothing, bit for bit."""
    backbone = make_backbone()
    randomize_camera_encoder(backbone)
    latents, timesteps, cond = torch.randn(2, 1, 4, SIZE, SIZE), torch.tensor([3.0, 500.0]), None
    cond = make_cond(2, 1)
    with torch.no_grad():
        ours = backbone(latents, timesteps, cond)
        for block in backbone.model.blocks:
            block.attn1.set_processor(HunyuanAttnProcessor2_0())
        theirs = backbone(latents, timesteps, cond)
    assert torch.equal(ours, theirs)


# -- F = 4: one multi-view layer against float64 manual attention ------------------------


def test_multiview_layer_matches_float64_attention():
    backbone = make_backbone()
    attn = backbone.model.blocks[3].attn1
    batch, views, grid = 2, 4, (8, 6)  # a non-square grid checks the row-major RoPE layout
    tokens = grid[0] * grid[1]
    hook = LayerHook(index=3, path="blocks.3.attn1", multiview=True, num_views=views)
    processor = HunyuanMultiViewProcessor(hook)
    torch.manual_seed(5)
    hidden = torch.randn(batch * views, tokens, attn.to_q.in_features)
    cos, sin = reference_rope(*grid, 16)  # per channel pair -> diffusers' per channel layout
    rope = (cos.repeat_interleave(2, -1).float(), sin.repeat_interleave(2, -1).float())
    with torch.no_grad():
        out = processor(attn, hidden, image_rotary_emb=rope)

    q, k, v = reference_qkv(attn, hidden, grid)  # [B·F, heads, hw, d]

    def merge(t):  # -> [B, heads, F·hw, d]
        return t.unflatten(0, (batch, views)).transpose(1, 2).flatten(2, 3)

    q, k, v = merge(q), merge(k), merge(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(batch * views, tokens, -1)
    linear = attn.to_out[0]
    expected = attended @ linear.weight.double().T + linear.bias.double()
    assert (out.double() - expected).abs().max() <= 1e-5


def test_rotary_embedding_positions_tokens_on_the_grid():
    """At the native grid the adapter's RoPE puts token (r, c) at integer position (r, c)."""
    backbone = make_backbone()
    cos, sin = backbone.rotary_embedding(16, 16, torch.device("cpu"))
    ref_cos, ref_sin = reference_rope(16, 16, 16)
    assert torch.allclose(cos.double(), ref_cos.repeat_interleave(2, -1), atol=1e-6)
    assert torch.allclose(sin.double(), ref_sin.repeat_interleave(2, -1), atol=1e-6)


def test_distinct_view_positions_put_the_views_side_by_side():
    """view_positions distinct: view v's token (r, c) at RoPE position (r, c + 16 v)."""
    torch.manual_seed(0)
    backbone = HunyuanDiT.build("tiny", in_channels=4, view_positions="distinct").eval()
    layer = backbone.default_layer
    seen = capture_layer_input(backbone, layer)
    batch, views, grid = 1, 3, (16, 16)
    with torch.no_grad(), backbone.probe(layer, grid) as handle:
        backbone(torch.randn(batch, views, 4, SIZE, SIZE), torch.tensor([300.0]), make_cond(1, 3))
    attn = backbone.model.blocks[layer].attn1
    for view in range(views):
        q, k, _ = reference_qkv(attn, seen["hidden"][view::views], grid, col_offset=16 * view)
        assert (handle.result.q[:, view].double() - q).abs().max() <= 1e-5
        assert (handle.result.k[:, view].double() - k).abs().max() <= 1e-5
    with pytest.raises(CameoError, match="view_positions must be one of shared, distinct"):
        HunyuanDiT.build("tiny", in_channels=4, view_positions="stacked")


@pytest.mark.parametrize(("positions", "same_token"), [("shared", 1.0), ("distinct", 0.0)])
def test_positional_attention_finds_the_same_token_only_with_shared_positions(
    positions, same_token
):
    """A planted layer whose q and k are one constant vector attends by RoPE position alone
    (logit = sum |q_pair|^2 cos(angle difference), largest at no difference): with shared
    positions every query's best key in another view is its own pixel position."""
    torch.manual_seed(0)
    backbone = HunyuanDiT.build("tiny", in_channels=4, view_positions=positions).eval()
    layer = backbone.default_layer
    plant_positional(backbone, layer)  # what benchmarks/rope_positions.py measures with
    with torch.no_grad(), backbone.probe(layer, (16, 16)) as handle:
        backbone(torch.randn(1, 2, 4, SIZE, SIZE), torch.tensor([500.0]), make_cond(1, 2))
    best = handle.result.logits(0, 1, slice(None)).mean(1).argmax(-1)[0]  # [hw]
    assert (best == torch.arange(256)).float().mean().item() == same_token


def test_views_influence_their_own_sample_only():
    backbone = make_backbone()
    latents = torch.randn(2, 4, 4, SIZE, SIZE)
    timesteps = torch.tensor([100.0, 100.0])
    cond = make_cond(2, 4)
    changed = latents.clone()
    changed[0, 2] += torch.randn(4, SIZE, SIZE)
    with torch.no_grad():
        before = backbone(latents, timesteps, cond)
        after = backbone(changed, timesteps, cond)
    for view in (0, 1, 3):
        assert (after[0, view] - before[0, view]).abs().max() > 1e-4
    assert torch.equal(after[1], before[1])


def test_per_view_hook_keeps_views_apart():
    """A layer whose hook is per-view gives each view the stock single-image result."""
    backbone = make_backbone()
    attn = backbone.model.blocks[1].attn1
    hook = LayerHook(index=1, path="blocks.1.attn1", multiview=False, num_views=4)
    hidden = torch.randn(8, 64, attn.to_q.in_features)
    rope = backbone.rotary_embedding(8, 8, hidden.device)
    with torch.no_grad():
        ours = HunyuanMultiViewProcessor(hook)(attn, hidden, image_rotary_emb=rope)
        stock = HunyuanAttnProcessor2_0()(attn, hidden, image_rotary_emb=rope)
    assert torch.equal(ours, stock)


# -- probe and perturbation --------------------------------------------------------------


def test_probe_logits_match_recomputed_attention():
    backbone = make_backbone()
    layer = backbone.default_layer
    seen = capture_layer_input(backbone, layer)
    batch, views, grid = 2, 4, (16, 16)
    latents = torch.randn(batch, views, 4, SIZE, SIZE)
    with torch.no_grad(), backbone.probe(layer, grid) as handle:
        backbone(latents, torch.tensor([50.0, 900.0]), make_cond(batch, views))
    probe = handle.result
    assert probe.q.shape == (batch, views, 4, 256, 16)
    assert probe.scale == pytest.approx(16**-0.5)

    q, k, v = reference_qkv(backbone.model.blocks[layer].attn1, seen["hidden"], grid)
    q, k, v = (t.unflatten(0, (batch, views)) for t in (q, k, v))  # [B, F, heads, hw, d]
    # float32 probe vs float64 recomputation: within 1e-6 of the logits' magnitude
    for i, j, rows in [(0, 1, slice(None)), (2, 0, slice(None)), (3, 3, torch.tensor([0, 255]))]:
        expected = q[:, i, :, rows] @ k[:, j].transpose(-1, -2) / 4.0
        error = (probe.logits(i, j, rows).double() - expected).abs().max()
        assert error <= 1e-6 * expected.abs().max()

    # softmax over a full row (every key of every view) times V = the SDPA output row
    view, row = 1, 37
    logits = torch.cat([probe.logits(view, j, slice(row, row + 1)) for j in range(views)], -1)
    weights = torch.softmax(logits.double(), dim=-1)  # [B, heads, 1, F·hw]
    values = v.transpose(1, 2).flatten(2, 3)  # [B, heads, F·hw, d]
    expected_row = (weights @ values)[:, :, 0]  # [B, heads, d]
    attended = seen["attended"].unflatten(0, (batch, views))[:, view, row]  # [B, heads·d]
    assert (attended.double() - expected_row.flatten(1)).abs().max() <= 1e-5


def test_probe_gradient_reaches_earlier_layers_only():
    backbone = make_backbone()
    backbone.train()
    layer = backbone.default_layer
    with backbone.probe(layer, (16, 16)) as handle:
        backbone(torch.randn(1, 4, 4, SIZE, SIZE), torch.tensor([300.0]), make_cond(1, 4))
    handle.result.logits(0, 1).square().mean().backward()

    def grad_norm(module) -> float:
        grads = [p.grad.abs().sum() for p in module.parameters() if p.grad is not None]
        return float(sum(grads)) if grads else 0.0

    blocks = backbone.model.blocks
    attn = blocks[layer].attn1
    assert grad_norm(attn.to_q) > 0 and grad_norm(attn.to_k) > 0
    assert grad_norm(attn.to_v) == 0 and grad_norm(attn.to_out) == 0
    assert grad_norm(blocks[0]) > 0 and grad_norm(blocks[layer - 1]) > 0
    assert grad_norm(backbone.model.pos_embed) > 0
    assert grad_norm(backbone.camera_encoder) > 0  # the zero-initialised branch can learn
    for later in blocks[layer + 1 :]:
        assert grad_norm(later) == 0
    assert grad_norm(backbone.model.proj_out) == 0


def test_perturb_replaces_attention_by_values():
    backbone = make_backbone()
    layer = 5
    seen = capture_layer_input(backbone, layer)
    latents = torch.randn(1, 4, 4, SIZE, SIZE)
    timesteps, cond = torch.tensor([200.0]), make_cond(1, 4)
    attn = backbone.model.blocks[layer].attn1
    with torch.no_grad():
        plain = backbone(latents, timesteps, cond)
        with backbone.perturb([layer]):
            perturbed = backbone(latents, timesteps, cond)
        assert (seen["attended"] - attn.to_v(seen["hidden"])).abs().max() <= 1e-6
        again = backbone(latents, timesteps, cond)
    assert (perturbed - plain).abs().max() > 1e-4
    assert torch.equal(again, plain)


def test_layer_outside_range_names_the_valid_range():
    backbone = make_backbone()
    with pytest.raises(
        CameoError, match=r"^layer 10 is outside backbone 'hunyuan-dit' \(valid: 0-9\), default 8$"
    ):
        with backbone.probe(10, (16, 16)):
            pass


# -- cameras -------------------------------------------------------------------------------


def test_zero_initialised_cameras_leave_the_pretrained_model_unchanged():
    """At initialisation the camera-conditioned DiT equals the unconditioned one; once
    the camera encoder has learned something, cameras change the prediction."""
    backbone = make_backbone()
    stock = stock_copy(backbone)
    latents = torch.randn(3, 1, 4, SIZE, SIZE)
    timesteps = torch.tensor([1.0, 400.0, 999.0])
    with torch.no_grad():
        unconditioned = stock_forward(backbone, stock, latents[:, 0], timesteps)
        first = backbone(latents, timesteps, make_cond(3, 1, seed=1))
        second = backbone(latents, timesteps, make_cond(3, 1, seed=2))
        randomize_camera_encoder(backbone)
        trained = backbone(latents, timesteps, make_cond(3, 1, seed=1))
    assert (first[:, 0] - unconditioned).abs().max() <= 1e-6
    assert torch.equal(first, second)
    assert (trained - first).abs().max() > 1e-3


def test_drop_camera_zeroes_the_raymap_per_sample():
    backbone = make_backbone()
    randomize_camera_encoder(backbone)
    latents = torch.randn(2, 4, 4, SIZE, SIZE)
    timesteps = torch.tensor([250.0, 250.0])
    drop = torch.tensor([True, False])
    with torch.no_grad():
        first = backbone(latents, timesteps, make_cond(2, 4, seed=1, drop=drop))
        other_cameras = backbone(latents, timesteps, make_cond(2, 4, seed=2, drop=drop))
    assert torch.equal(first[0], other_cameras[0])  # dropped: the cameras do not matter
    assert (first[1] - other_cameras[1]).abs().max() > 1e-3
    channels = camera_condition_maps(make_cond(2, 4, drop=drop), 8, 8)
    assert channels[0, :, :6].abs().max() == 0 and channels[1, :, :6].abs().max() > 0
    assert torch.equal(channels[:, 0, 6], torch.ones(2, 8, 8))  # reference mask is kept


# -- construction, layer table, smoke ----------------------------------------------------


def test_full_layer_table_at_512px_on_meta_device():
    with torch.device("meta"):
        backbone = HunyuanDiT.build("full", in_channels=4)
    assert all(p.is_meta for p in backbone.parameters())
    table = backbone.layers(512)
    assert len(table) == 40  # paths and default layer against the spec: test_backbones_spec
    assert backbone.default_layer == HUNYUAN_DIT.default_layer == 32
    default = table[32]
    assert default.path == "blocks.32.attn1" and default.default
    assert default.grid == (32, 32) and (default.heads, default.head_dim) == (16, 88)
    assert all(info.multiview for info in table)
    assert sum(info.default for info in table) == 1
    assert backbone.model.config.hidden_size == 1408


def test_tiny_default_layer_at_the_full_models_relative_depth():
    tiny, full = VARIANTS["tiny"], VARIANTS["full"]
    assert make_backbone().default_layer / tiny.config["num_layers"] == pytest.approx(
        HUNYUAN_DIT.default_layer / full.config["num_layers"]
    )


@pytest.mark.parametrize("in_channels", [4, 3])
def test_tiny_builds_fast_and_trains(in_channels):
    start = time.perf_counter()
    backbone = HunyuanDiT.build("tiny", in_channels=in_channels)
    assert time.perf_counter() - start < 2.0
    latents = torch.randn(2, 4, in_channels, SIZE, SIZE)
    prediction = backbone(latents, torch.tensor([0.0, 999.0]), make_cond(2, 4))
    assert prediction.shape == latents.shape
    prediction.square().mean().backward()
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert len(grads) > 0 and all(torch.isfinite(g).all() for g in grads)
    # the learned nulls of the text conditioning are trained too
    assert backbone.null_text_t5.grad is not None and backbone.null_text_t5.grad.abs().sum() > 0
    assert backbone.model.text_embedding_padding.grad.abs().sum() > 0
    grid = backbone.token_grid(backbone.default_layer, (SIZE, SIZE))
    assert grid == ((16, 16) if in_channels == 3 else (2, 2))


def test_bfloat16_forward_follows_float32():
    backbone = make_backbone()
    latents, timesteps, cond = (
        torch.randn(1, 4, 4, SIZE, SIZE),
        torch.tensor([500.0]),
        make_cond(1, 4),
    )
    with torch.no_grad():
        reference = backbone(latents, timesteps, cond)
        half = backbone.to(torch.bfloat16)(latents.bfloat16(), timesteps, cond)
    assert half.dtype == torch.bfloat16
    assert (half.float() - reference).abs().max() <= 0.05 * reference.abs().max()


def test_gradient_checkpointing_gives_the_same_gradients_with_a_probe():
    plain = make_backbone()
    checkpointed = make_backbone()
    checkpointed.enable_gradient_checkpointing()
    latents, timesteps, cond = (
        torch.randn(1, 2, 4, SIZE, SIZE),
        torch.tensor([77.0]),
        make_cond(1, 2),
    )
    for model in (plain, checkpointed):  # a denoising loss plus a loss on the probe
        model.train()
        with model.probe(model.default_layer, (16, 16)) as handle:
            prediction = model(latents, timesteps, cond)
        loss = prediction.square().mean() + handle.result.logits(0, 1).square().mean()
        loss.backward()
    for (name, a), (_, b) in zip(
        plain.named_parameters(), checkpointed.named_parameters(), strict=True
    ):
        assert a.grad is not None and torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_pretrained_folder_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(3)
    stock = HunyuanDiT2DModel(in_channels=4, **VARIANTS["tiny"].config).eval()
    stock.save_pretrained(tmp_path / "pipeline" / "transformer")
    backbone = HunyuanDiT.build("tiny", in_channels=4, pretrained=str(tmp_path / "pipeline"))
    latents, timesteps = torch.randn(2, 1, 4, SIZE, SIZE), torch.tensor([5.0, 600.0])
    with torch.no_grad():
        ours = backbone.eval()(latents, timesteps, make_cond(2, 1))
        theirs = stock_forward(backbone, stock, latents[:, 0], timesteps)
    assert (ours[:, 0] - theirs).abs().max() <= 1e-6
    with pytest.raises(CameoError, match="does not exist"):
        HunyuanDiT.build("tiny", pretrained=str(tmp_path / "missing"))
    with pytest.raises(CameoError, match="input channels"):
        HunyuanDiT.build("tiny", in_channels=3, pretrained=str(tmp_path / "pipeline"))
    with pytest.raises(CameoError, match="blocks"):
        HunyuanDiT.build("full", in_channels=4, pretrained=str(tmp_path / "pipeline"))


def test_save_and_load_offline_give_identical_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = make_backbone(seed=4)
    randomize_camera_encoder(backbone)
    with torch.no_grad():
        backbone.null_text_t5.normal_()
    backbone.save_pretrained(tmp_path / "saved")
    loaded = HunyuanDiT.from_pretrained(tmp_path / "saved").eval()
    assert isinstance(loaded.model.blocks[0].attn1.processor, HunyuanMultiViewProcessor)
    assert torch.equal(loaded.null_text_t5, backbone.null_text_t5)
    latents, timesteps = torch.randn(1, 4, 4, SIZE, SIZE), torch.tensor([321.0])
    cond = make_cond(1, 4)
    with torch.no_grad():
        assert torch.equal(loaded(latents, timesteps, cond), backbone(latents, timesteps, cond))


def test_view_positions_from_a_recipe_survive_save_and_load(tmp_path):
    from cameo_cli.config import load_recipe
    from cameo_cli.registry import load_backbone
    from cameo_cli.train.setup import build_training_backbone

    recipe = load_recipe(
        "quickstart-cpu", ["backbone.name=hunyuan-dit", "backbone.options.view_positions=distinct"]
    )
    backbone = build_training_backbone(recipe, 12)
    backbone.save_pretrained(tmp_path / "backbone")
    assert load_backbone(tmp_path / "backbone").view_positions == "distinct"
