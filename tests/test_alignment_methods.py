"""The alignment-method registry and multi-layer CAMEO: entry points, broken and duplicate
plugins, listing without torch, the weighted sum over layers in one probe pass, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cameo_cli import registry
from cameo_cli.alignment.method import AlignmentInputs
from cameo_cli.backbone import ViewConditioning
from cameo_cli.cli import main
from cameo_cli.config import load_recipe
from cameo_cli.errors import CameoError
from tests.conftest import builtin_alignment_entries
from tests.plugins import pip, write_plugin
from tests.test_registry import _fake_entry_point

REPO = Path(__file__).resolve().parents[1]
BUILTINS = ("cameo", "geometry-forcing", "none", "repa")


@pytest.fixture
def fake_alignments(monkeypatch):
    """Replace the installed `cameo.alignments` entry points by the given ones."""

    def install(*eps) -> None:
        monkeypatch.setattr(
            registry,
            "entry_points",
            lambda group: list(eps) if group == registry.ALIGNMENT_GROUP else [],
        )
        monkeypatch.delenv(registry.ALIGNMENT_ENV_VARIABLE, raising=False)

    return install


def _builtin_entry_points():
    return [_fake_entry_point(n, v, "cameo") for n, v in builtin_alignment_entries().items()]


def test_builtins_are_the_pyproject_entry_points(fake_alignments):
    fake_alignments(*_builtin_entry_points())
    found = registry.discover_alignments()
    assert tuple(found) == BUILTINS
    assert all(entry.ok and entry.source == "cameo" for entry in found.values())
    assert found["cameo"].spec.needs == ("probe", "geometry")
    assert found["none"].spec.load_method() is None
    rows = json.loads(CliRunner().invoke(main, ["alignments", "list", "--json"]).output)
    assert [(r["name"], r["distribution"], r["status"]) for r in rows] == [
        (name, "cameo", "ok") for name in BUILTINS
    ]


def test_broken_and_duplicate_plugins(fake_alignments):
    fake_alignments(
        *_builtin_entry_points(),
        _fake_entry_point("broken", "no_such_module_xyz:SPEC", "bad-dist"),
        _fake_entry_point("wrong-type", "cameo.backbones:CAT3D", "odd-dist"),
    )
    found = registry.discover_alignments()
    assert "No module named 'no_such_module_xyz'" in found["broken"].error
    assert "not a cameo AlignmentSpec" in found["wrong-type"].error
    assert registry.get_alignment_spec("cameo").name == "cameo"  # the others still work
    result = CliRunner().invoke(main, ["alignments", "list", "--json"])
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["broken"]["status"] == "broken" and rows["broken"]["distribution"] == "bad-dist"
    with pytest.raises(CameoError, match="alignment method 'broken' from 'bad-dist' is broken"):
        registry.get_alignment_spec("broken")
    fake_alignments(
        *_builtin_entry_points(), _fake_entry_point("cameo", "cameo.alignments:CAMEO", "x")
    )
    with pytest.raises(CameoError, match="'cameo' is registered twice: by 'cameo' and by 'x'"):
        registry.discover_alignments()


def test_listing_does_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        from click.testing import CliRunner
        from cameo_cli.cli import main
        result = CliRunner().invoke(main, ["alignments", "list"])
        assert result.exit_code == 0, result.output
        print("HEAVY", [m for m in ("torch", "transformers") if m in sys.modules])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--align", "nope"], "unknown alignment method 'nope' (known: cameo"),
        (["--layer", "10,99"], "layer 99 is outside backbone 'cat3d' (valid: 0-15)"),
        (["--layer", "10,x"], "a layer number >= 0, a list of them or ranges (3,8-10)"),
    ],
)
def test_one_line_errors(args, message, tmp_path):
    result = CliRunner().invoke(
        main,
        ["train", "--recipe", "cat3d-re10k", "--output", str(tmp_path / "r"), *args],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def _tiny_cameo(layers: list[int], weights: list[float]):
    from cameo_cli.registry import build_backbone
    from cameo_cli.train.plan import plan_run

    torch.manual_seed(0)
    backbone = build_backbone("cat3d", "tiny", in_channels=3)
    recipe = load_recipe(
        "quickstart-cpu",
        [f"alignment.layer={','.join(map(str, layers))}"]
        + [f"alignment.weight={','.join(map(str, weights))}"],
    )
    plan = plan_run(recipe, backbone)
    return backbone, plan.method.build(plan.recipe, backbone).double(), plan


def _batch(views: int = 3, size: int = 32):
    from cameo_cli.batch import ViewBatch
    from cameo_cli.cameras import intrinsics_matrix

    generator = torch.Generator().manual_seed(3)
    K = intrinsics_matrix(*torch.tensor([30.0, 30.0, 16.0, 16.0])).expand(1, views, 3, 3)
    w2c = torch.eye(4).repeat(1, views, 1, 1)
    w2c[0, :, 0, 3] = torch.arange(views) * 0.1
    depth = 2.0 + 0.1 * torch.rand(1, views, size, size, generator=generator)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    cam = torch.stack([(xs - 16) / 30 * depth, (ys - 16) / 30 * depth, depth], dim=2)
    world = cam - w2c[0, :, :3, 3][None, :, :, None, None]
    return ViewBatch(
        images=torch.rand(1, views, 3, size, size, generator=generator) * 2 - 1,
        intrinsics=K,
        world_to_camera=w2c,
        ref_mask=torch.tensor([[True, False, False]]),
        scenes=["s"],
        frames=torch.arange(views)[None],
        point_map=world,
        point_valid=torch.ones(1, views, size, size, dtype=torch.bool),
    )


def test_two_layers_are_the_weighted_sum_of_single_layers_in_one_pass():
    from cameo_cli.train.model import CameoTrainingModel

    backbone, both, plan = _tiny_cameo([10, 12], [0.02, 0.05])
    assert plan.recipe.alignment.layer == [10, 12]
    assert sorted(both.state_dict()) == sorted(
        f"losses.{layer}.head.{i}.{p}"
        for layer in (10, 12)
        for i in (0, 2)
        for p in ("weight", "bias")
    )
    backbone = backbone.double()
    model = CameoTrainingModel(backbone, both)
    batch = _batch()
    calls = []
    backbone.model.register_forward_hook(lambda *args: calls.append(1))
    noisy = torch.randn(1, 3, 3, 32, 32, dtype=torch.float64)
    cond = ViewConditioning.from_batch(batch)
    geometry = {"point_map": batch.point_map.double(), "point_valid": batch.point_valid}
    _, output = model(noisy, torch.tensor([500.0]), cond, **geometry)
    assert len(calls) == 1  # one forward pass probes both layers
    assert set(output.terms) == {"cameo/10", "cameo/12"}
    expected = 0.0
    for layer, weight in ((10, 0.02), (12, 0.05)):
        _, single, _ = _tiny_cameo([layer], [weight])
        prefix = f"losses.{layer}."
        single.load_state_dict({k: v for k, v in both.state_dict().items() if k.startswith(prefix)})
        with torch.no_grad(), backbone.probe(layer, single.grids[layer]) as handle:
            backbone(noisy, torch.tensor([500.0]), cond)
        inputs = AlignmentInputs(cond.ref_mask, {layer: handle.result}, {}, **geometry)
        alone = single(inputs)
        assert set(alone.terms) == {"cameo"}
        torch.testing.assert_close(alone.terms["cameo"], output.terms[f"cameo/{layer}"])
        torch.testing.assert_close(alone.total, weight * alone.terms["cameo"], rtol=0, atol=0)
        expected = expected + alone.total
    torch.testing.assert_close(output.total, expected, rtol=1e-12, atol=0)


def test_layer_list_errors():
    from cameo_cli.registry import build_backbone
    from cameo_cli.train.plan import resolve_layer

    backbone = build_backbone("cat3d", "tiny", in_channels=3)
    recipe = load_recipe("quickstart-cpu", ["alignment.layer=10,16"])
    with pytest.raises(CameoError, match=r"layer 16 is outside backbone 'cat3d' \(valid: 0-15\)"):
        resolve_layer(recipe, backbone)
    with pytest.raises(CameoError, match="attends within each view only"):
        resolve_layer(load_recipe("quickstart-cpu", ["alignment.layer=0,10"]), backbone)
    with pytest.raises(CameoError, match="one number per layer"):
        load_recipe("quickstart-cpu", ["alignment.layer=10,12", "alignment.weight=0.1,0.2,0.3"])
    with pytest.raises(CameoError, match="without repeats"):
        load_recipe("quickstart-cpu", ["alignment.layer=10,10"])
    from cameo_cli.train.plan import check_recipe

    with pytest.raises(CameoError, match="method 'cameo' takes no options"):
        check_recipe(load_recipe("quickstart-cpu", ["alignment.options.teacher=x"]))
    with pytest.raises(CameoError, match="unknown alignment method 'nope' \\(known: cameo"):
        check_recipe(load_recipe("quickstart-cpu", ["alignment.method=nope"]))


PLUGIN_CODE = '''
"""A third-party alignment method: pull the default block's hidden state towards zero."""
from dataclasses import dataclass

from cameo_cli.registry import AlignmentSpec


@dataclass
class ShrinkOptions:
    scale: float = 1.0


SPEC = AlignmentSpec(
    name="shrink",
    description="a test plugin",
    method="cameo_shrink_plugin.method:Shrink",
    needs=("hidden_state",),
    parameters=ShrinkOptions,
)
'''
PLUGIN_METHOD = """
import torch
from torch import nn

from cameo_cli.alignment.method import (
    AlignmentMethod, AlignmentNeeds, AlignmentOutput, block_of_layer, parse_options
)
from cameo_shrink_plugin import SPEC


class Shrink(AlignmentMethod):
    spec = SPEC

    def __init__(self, block, scale):
        super().__init__()
        self.block, self.gain = block, nn.Parameter(torch.tensor(scale))

    @classmethod
    def build(cls, recipe, backbone):
        block = block_of_layer(backbone.hooks[recipe.alignment.layer].path)
        return cls(block, parse_options(SPEC, recipe)["scale"])

    @property
    def needs(self):
        return AlignmentNeeds(blocks=(self.block,))

    def forward(self, inputs):
        value = (self.gain * inputs.blocks[self.block].float()).square().mean()
        return AlignmentOutput(0.1 * value, {"shrink": value})
"""


@pytest.mark.slow
def test_third_party_alignment_is_installed_listed_trained_and_removed(synthetic_dataset, tmp_path):
    plugin = write_plugin(
        tmp_path,
        "cameo-shrink-plugin",
        "cameo.alignments",
        'shrink = "cameo_shrink_plugin:SPEC"',
        {"__init__.py": PLUGIN_CODE, "method.py": PLUGIN_METHOD},
    )
    pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(plugin))
    try:
        cli = [sys.executable, "-m", "cameo_cli"]
        out = subprocess.run(
            [*cli, "alignments", "list", "--json"], capture_output=True, text=True, cwd=REPO
        )
        rows = {row["name"]: row for row in json.loads(out.stdout)}
        assert rows["shrink"]["distribution"] == "cameo-shrink-plugin"
        assert rows["shrink"]["status"] == "ok" and rows["shrink"]["options"] == ["scale"]
        run = tmp_path / "run"
        train = [
            *cli,
            "train",
            "--recipe",
            "quickstart-cpu",
            "--align",
            "shrink",
            "--dataset",
            str(synthetic_dataset),
            "--steps",
            "2",
            "--output",
            str(run),
            "--set",
            "train.batch_size=1",
            "--set",
            "sample.steps=2",
            "--set",
            "train.log_every=1",
            "--set",
            "alignment.options.scale=0.5",
        ]
        out = subprocess.run(train, capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0, out.stderr
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics if "shrink" in m] == [1, 2]
        config = (run / "checkpoints" / "step-000002" / "config.yaml").read_text()
        assert "scale: 0.5" in config and "method: shrink" in config
    finally:
        pip("uninstall", "-y", "cameo-shrink-plugin")
    out = subprocess.run(
        [sys.executable, "-m", "cameo_cli", "alignments", "list", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert "shrink" not in {row["name"] for row in json.loads(out.stdout)}
