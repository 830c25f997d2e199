"""One smoke test over every registered backbone, the example plugin included.

The plugin is registered without pip: its folder goes on `sys.path` and, unless an
installed copy (or an `.egg-info` left in that folder by a local build) already provides
its entry point, `CAMEO_BACKBONES` names its spec. The backbone names are read from the
registry at collection time with that registration applied, so a newly registered backbone
is smoke-tested without editing this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cameo_cli import cameras, registry
from cameo_cli.backbone import ViewConditioning
from cameo_cli.config import load_recipe
from cameo_cli.errors import CameoError
from cameo_cli.train.plan import check_recipe, resolve_layer

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "cameo-example-backbone"
PLUGIN_NAME = "example-dit"
PLUGIN_ENTRY = f"{PLUGIN_NAME}=cameo_example_backbone.spec:EXAMPLE_DIT"
BUILT_IN = {"cat3d", "mvgenmaster", "hunyuan-dit"}

BATCH, VIEWS = 2, 4
LATENT = 16  # 4-channel SD latents of 16 x 16 (downsample 8): 128 x 128 images
IMAGE = LATENT * 8


def register_plugin(patch: pytest.MonkeyPatch) -> None:
    """Make the example plugin importable and registered (without installing it)."""
    patch.syspath_prepend(str(PLUGIN))
    if PLUGIN_NAME not in registry.discover():
        entries = [os.environ.get(registry.ENV_VARIABLE, ""), PLUGIN_ENTRY]
        patch.setenv(registry.ENV_VARIABLE, ",".join(filter(None, entries)))


def registered_names() -> list[str]:
    with pytest.MonkeyPatch.context() as patch:
        register_plugin(patch)
        return [spec.name for spec in registry.list_specs()]


NAMES = registered_names()


@pytest.fixture(autouse=True)
def plugin_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    register_plugin(monkeypatch)


def random_conditioning(generator: torch.Generator) -> ViewConditioning:
    """Random rigid cameras (OpenCV), pixel intrinsics for 128 px images, view 0 the reference
    of every sample, the camera dropped (CFG) for the second sample, and geometry (reference
    images, a point map from random depth) for backbones with geometric priors."""
    shape = (BATCH, VIEWS)
    focal = 100.0 + 20.0 * torch.rand(shape, generator=generator)
    centre = IMAGE / 2 + torch.randn(shape, generator=generator)
    K = cameras.intrinsics_matrix(focal, focal * 1.05, centre, centre)
    q, _ = torch.linalg.qr(torch.randn(*shape, 3, 3, generator=generator))
    rotation = q * torch.linalg.det(q).sign()[..., None, None]  # a proper rotation
    translation = torch.randn(*shape, 3, 1, generator=generator)
    w2c = cameras.c2w_to_w2c(cameras.pose_from_3x4(torch.cat([rotation, translation], -1)))
    depth = 1.0 + torch.rand(*shape, IMAGE, IMAGE, generator=generator)
    ref_mask = torch.zeros(shape, dtype=torch.bool)
    ref_mask[:, 0] = True
    return ViewConditioning(
        intrinsics=K,
        world_to_camera=w2c,
        ref_mask=ref_mask,
        image_size=(IMAGE, IMAGE),
        drop_camera=torch.tensor([False, True]),
        ref_images=torch.rand(*shape, 3, IMAGE, IMAGE, generator=generator) * 2 - 1,
        point_map=cameras.unproject_depth(depth, K, w2c),
        point_valid=torch.ones(*shape, IMAGE, IMAGE, dtype=torch.bool),
    )


def test_every_backbone_is_covered():
    assert BUILT_IN | {PLUGIN_NAME} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_forward_backward_finite_gradients(name: str):
    """Build tiny, forward F = 4 views, backward: every trainable parameter gets a finite
    gradient (none is left out of the graph), and each module cameo adds outside the wrapped
    diffusers model (zero-initialised camera input, learned null text) gets a non-zero one."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    backbone = registry.build_backbone(name, "tiny", in_channels=4).train()
    latents = torch.randn(BATCH, VIEWS, 4, LATENT, LATENT, generator=generator)
    timesteps = torch.tensor([10.0, 900.0])

    prediction = backbone(latents, timesteps, random_conditioning(generator))
    assert prediction.shape == latents.shape
    assert torch.isfinite(prediction).all()
    prediction.square().mean().backward()

    trainable = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    without_grad = sorted(n for n, p in trainable.items() if p.grad is None)
    assert without_grad == []
    not_finite = sorted(n for n, p in trainable.items() if not torch.isfinite(p.grad).all())
    assert not_finite == []
    added = {n: p for n, p in trainable.items() if not n.startswith("model.")}
    assert added, "a backbone must add a camera input outside the wrapped model"
    # each added module learns from the first step; inside a stack ending in a zero conv
    # (MVGenMaster's colour-prior encoder) only that conv does until it is non-zero
    modules = {n.split(".")[0] for n in added}
    learning = {n.split(".")[0] for n, p in added.items() if p.grad.abs().max() > 0}
    assert sorted(modules - learning) == []


@pytest.mark.parametrize("name", NAMES)
def test_layer_out_of_range_names_the_valid_range(name: str):
    """`--layer` (alignment.layer) outside the backbone: the full config is refused from the
    registry's spec before building, the tiny one by the built backbone; both name 0-(L-1)."""
    spec = registry.get_spec(name)
    count = len(spec.layer_paths)
    full = load_recipe(
        "quickstart-cpu",
        [f"backbone.name={name}", "backbone.variant=full", f"alignment.layer={count}"],
    )
    with pytest.raises(CameoError, match=rf"layer {count} is outside .*valid: 0-{count - 1}\b"):
        check_recipe(full)

    backbone = registry.build_backbone(name, "tiny", in_channels=4)
    layers = len(backbone.hooks)
    tiny = load_recipe("quickstart-cpu", [f"backbone.name={name}", f"alignment.layer={layers}"])
    expected = rf"layer {layers} is outside backbone '{name}' \(valid: 0-{layers - 1}\)"
    with pytest.raises(CameoError, match=expected):
        resolve_layer(tiny, backbone)
    with pytest.raises(CameoError, match=expected.replace(f"layer {layers}", "layer -1")):
        backbone.check_layer(-1)  # the recipe refuses negative layers before this
    assert resolve_layer(load_recipe("quickstart-cpu", [f"backbone.name={name}"]), backbone) == (
        backbone.default_layer
    )


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_refused_before_building(name: str):
    with pytest.raises(CameoError, match=rf"backbone '{name}': unknown options \['no_such'\]"):
        registry.build_backbone(name, "tiny", in_channels=4, no_such=1)
