"""The example third-party plugin's backbone (imported from its source folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cameo_cli.backbone import ViewConditioning
from cameo_cli.registry import ENV_VARIABLE, discover
from cameo_cli.testing import check_backbone_against_spec

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "cameo-example-backbone"
SIZE = 32


@pytest.fixture
def plugin(monkeypatch):
    """The plugin's modules, imported from its folder as an installed copy would be."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    from cameo_example_backbone import dit, spec

    return spec, dit


def make_cond(batch: int, views: int) -> ViewConditioning:
    generator = torch.Generator().manual_seed(7)
    K = torch.tensor([[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]])
    w2c = torch.eye(4).repeat(batch, views, 1, 1)
    w2c[..., :3, 3] = torch.randn(batch, views, 3, generator=generator)
    ref_mask = torch.zeros(batch, views, dtype=torch.bool)
    ref_mask[:, :2] = True
    return ViewConditioning(K.expand(batch, views, 3, 3), w2c, ref_mask, (SIZE, SIZE))


def test_spec_module_does_not_import_torch():
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(PLUGIN)!r})\n"
        "from cameo_example_backbone.spec import EXAMPLE_DIT\n"
        "print(EXAMPLE_DIT.name, EXAMPLE_DIT.default_hook, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["example-dit", "transformer_blocks.22.attn1", "False"]


def test_spec_matches_the_full_model(plugin, monkeypatch):
    spec, dit = plugin
    assert spec.EXAMPLE_DIT.load_adapter() is dit.ExampleDiT
    # what a plugin's own tests call: layer paths, default layer, multi-view flags
    if "example-dit" not in discover():  # not installed: register it from its folder
        monkeypatch.setenv(ENV_VARIABLE, "example-dit=cameo_example_backbone.spec:EXAMPLE_DIT")
    check_backbone_against_spec("example-dit")
    with torch.device("meta"):
        full = dit.ExampleDiT.build("full", in_channels=4)
    table = full.layers(256)
    default = table[spec.EXAMPLE_DIT.default_layer]
    assert default.default and full.default_layer == 22
    assert default.grid == (16, 16) and (default.heads, default.head_dim) == (16, 72)


@pytest.mark.parametrize("in_channels", [4, 3])
def test_tiny_forward_backward_finite(plugin, in_channels):
    _, dit = plugin
    backbone = dit.ExampleDiT.build("tiny", in_channels=in_channels)
    latents = torch.randn(2, 4, in_channels, SIZE, SIZE)
    prediction = backbone(latents, torch.tensor([10.0, 900.0]), make_cond(2, 4))
    assert prediction.shape == latents.shape
    prediction.square().mean().backward()
    grads = {name: p.grad for name, p in backbone.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["camera_encoder.weight"].abs().sum() > 0  # the zero-init branch learns
    assert grads["model.transformer_blocks.0.attn1.to_q.weight"].abs().sum() > 0


def test_single_view_equals_the_stock_dit(plugin):
    """F = 1 with zero-initialised cameras (and no added q/k norm): exactly diffusers' DiT
    given its null class."""
    _, dit = plugin
    torch.manual_seed(0)
    backbone = dit.ExampleDiT.build("tiny", in_channels=4, qk_norm=False).eval()
    stock = type(backbone.model)(**backbone.model.config).eval()
    stock.load_state_dict(backbone.model.state_dict())
    latents, timesteps = torch.randn(2, 1, 4, SIZE, SIZE), torch.tensor([3.0, 600.0])
    null_class = torch.full((2,), backbone.model.config.num_embeds_ada_norm)
    with torch.no_grad():
        ours = backbone(latents, timesteps, make_cond(2, 1))[:, 0]
        theirs = stock(latents[:, 0], timesteps, class_labels=null_class).sample[:, :4]
    assert theirs.abs().mean() > 0.01
    assert (ours - theirs).abs().max() <= 1e-6


def test_views_attend_within_their_sample(plugin):
    _, dit = plugin
    torch.manual_seed(0)
    backbone = dit.ExampleDiT.build("tiny", in_channels=4).eval()
    latents = torch.randn(2, 4, 4, SIZE, SIZE)
    changed = latents.clone()
    changed[1, 3] += 1.0
    timesteps, cond = torch.tensor([100.0, 100.0]), make_cond(2, 4)
    with torch.no_grad():
        before, after = backbone(latents, timesteps, cond), backbone(changed, timesteps, cond)
    assert (after[1, 0] - before[1, 0]).abs().max() > 1e-5
    assert torch.equal(after[0], before[0])


def test_save_and_load_round_trip(plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, dit = plugin
    backbone = dit.ExampleDiT.build("tiny", in_channels=3).eval()
    with torch.no_grad():
        backbone.camera_encoder.weight.normal_()
        backbone.model.transformer_blocks[2].attn1.norm_q.weight.normal_()  # an added module
    backbone.save_pretrained(tmp_path / "saved")
    loaded = dit.ExampleDiT.from_pretrained(tmp_path / "saved").eval()
    assert loaded.options["qk_norm"] is True and loaded.options["downsample"] == 1
    latents, timesteps, cond = (
        torch.randn(1, 4, 3, SIZE, SIZE),
        torch.tensor([50.0]),
        make_cond(1, 4),
    )
    with torch.no_grad():
        assert torch.equal(loaded(latents, timesteps, cond), backbone(latents, timesteps, cond))


def test_gradient_checkpointing_keeps_gradients(plugin):
    _, dit = plugin
    torch.manual_seed(0)
    plain = dit.ExampleDiT.build("tiny", in_channels=4)
    torch.manual_seed(0)
    checkpointed = dit.ExampleDiT.build("tiny", in_channels=4)
    checkpointed.enable_gradient_checkpointing()
    latents, timesteps, cond = (
        torch.randn(1, 2, 4, SIZE, SIZE),
        torch.tensor([9.0]),
        make_cond(1, 2),
    )
    for model in (plain, checkpointed):
        model(latents, timesteps, cond).square().mean().backward()
    for (name, a), (_, b) in zip(
        plain.named_parameters(), checkpointed.named_parameters(), strict=True
    ):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
