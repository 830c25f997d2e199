"""The backbone registry: entry-point discovery, broken and duplicate plugins, CLI listing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from click.testing import CliRunner

from cameo_cli import registry
from cameo_cli.cli import main
from cameo_cli.errors import CameoError
from cameo_cli.registry import BackboneSpec
from tests.plugins import pip, write_plugin

REPO = Path(__file__).resolve().parents[1]

FAKE_SPEC = BackboneSpec(
    name="fake",
    description="a faked backbone",
    default_layer=1,
    layer_paths=("a.attn1", "b.attn1"),
    adapter="cameo.backbones.cat3d:Cat3D",
)


@dataclass
class _FakeDist:
    name: str
    version: str = "1.0"


@dataclass
class _FakeEntryPoint:
    """What the registry reads of an installed entry point: name, value, dist, load()."""

    name: str
    value: str
    dist: _FakeDist

    def load(self) -> object:
        return EntryPoint(self.name, self.value, registry.ENTRY_POINT_GROUP).load()


def _fake_entry_point(name: str, value: str, dist: str) -> _FakeEntryPoint:
    return _FakeEntryPoint(name, value, _FakeDist(dist))


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Replace installed entry points by the given list (nerfstudio's test pattern)."""

    def install(*eps: _FakeEntryPoint) -> None:
        monkeypatch.setattr(registry, "entry_points", lambda group: list(eps))
        monkeypatch.delenv(registry.ENV_VARIABLE, raising=False)

    return install


def test_discovers_faked_entry_point(fake_entry_points):
    fake_entry_points(_fake_entry_point("fake", "tests.test_registry:FAKE_SPEC", "fake-dist"))
    found = registry.discover()
    assert list(found) == ["fake"]
    assert found["fake"].spec is FAKE_SPEC
    assert found["fake"].source == "fake-dist"
    assert registry.get_spec("fake").default_hook == "b.attn1"


def test_broken_plugin_is_listed_and_others_still_work(fake_entry_points):
    fake_entry_points(
        _fake_entry_point("fake", "tests.test_registry:FAKE_SPEC", "good-dist"),
        _fake_entry_point("broken", "no_such_module_xyz:SPEC", "bad-dist"),
        _fake_entry_point("wrong-type", "tests.test_registry:REPO", "odd-dist"),
    )
    found = registry.discover()
    assert found["fake"].ok
    assert not found["broken"].ok
    assert "No module named 'no_such_module_xyz'" in found["broken"].error
    assert "not a cameo BackboneSpec" in found["wrong-type"].error
    assert [spec.name for spec in registry.list_specs()] == ["fake"]
    with pytest.raises(CameoError, match="broken"):
        registry.get_spec("broken")


def test_duplicate_name_names_both_distributions(fake_entry_points):
    fake_entry_points(
        _fake_entry_point("fake", "tests.test_registry:FAKE_SPEC", "first-dist"),
        _fake_entry_point("fake", "tests.test_registry:FAKE_SPEC", "second-dist"),
    )
    with pytest.raises(CameoError, match="first-dist.*second-dist"):
        registry.discover()


def test_spec_name_must_match_entry_point(fake_entry_points):
    fake_entry_points(_fake_entry_point("other", "tests.test_registry:FAKE_SPEC", "d"))
    assert "names a spec called 'fake'" in registry.discover()["other"].error


def test_environment_variable_registers_without_install(fake_entry_points, monkeypatch):
    fake_entry_points()
    monkeypatch.setenv(registry.ENV_VARIABLE, "fake=tests.test_registry:FAKE_SPEC")
    found = registry.discover()
    assert found["fake"].ok and found["fake"].source == "CAMEO_BACKBONES"
    monkeypatch.setenv(registry.ENV_VARIABLE, "fake-without-target")
    with pytest.raises(CameoError, match="name=module:attribute"):
        registry.discover()


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(CameoError, match=r"unknown backbone 'nope' \(known: .*cat3d"):
        registry.get_spec("nope")
    result = CliRunner().invoke(main, ["backbones", "show", "nope"])
    assert result.exit_code == 2
    assert "unknown backbone 'nope'" in result.output and "Traceback" not in result.output


def test_builtin_backbones_are_registered_through_entry_points():
    found = registry.discover()
    for name, layer in (("cat3d", 10), ("mvgenmaster", 10), ("hunyuan-dit", 32)):
        assert found[name].source == "cameo"
        assert found[name].spec.default_layer == layer
    cat3d_hook = found["cat3d"].spec.default_hook
    assert cat3d_hook == "up_blocks.2.attentions.0.transformer_blocks.0.attn1"
    assert found["hunyuan-dit"].spec.default_hook == "blocks.32.attn1"


def test_listing_does_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        from click.testing import CliRunner
        from cameo_cli.cli import main
        result = CliRunner().invoke(main, ["backbones", "list"])
        assert result.exit_code == 0, result.output
        heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
        print("HEAVY", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def _cli_json(*args: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "cameo_cli", *args, "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_installed_plugins_real_and_broken(tmp_path):
    """Install the example plugin and a plugin whose import raises; list; uninstall."""
    broken = write_plugin(
        tmp_path,
        "cameo-broken-plugin",
        "cameo.backbones",
        'broken = "cameo_broken_plugin:SPEC"',
        {"__init__.py": 'raise RuntimeError("this plugin is broken on purpose")\n'},
    )
    # install from a copy, so pip's build folders never land in the source tree
    example = shutil.copytree(REPO / "plugins" / "cameo-example-backbone", tmp_path / "example")
    flags = ("--no-deps", "--no-build-isolation", "--no-index")
    pip("install", *flags, str(example), str(broken))
    try:
        rows = {row["name"]: row for row in _cli_json("backbones", "list")}
        plugin = [r for r in rows.values() if r["distribution"] == "cameo-example-backbone"]
        assert len(plugin) == 1 and plugin[0]["status"] == "ok"
        assert rows["broken"]["status"] == "broken"
        assert rows["broken"]["distribution"] == "cameo-broken-plugin"
        assert "this plugin is broken on purpose" in rows["broken"]["error"]
        # every working backbone still builds (tiny) while the broken one is installed, and
        # matches its spec (the installed plugin included)
        code = (
            "from cameo_cli.registry import build_backbone, list_specs\n"
            "from cameo_cli.testing import check_backbone_against_spec\n"
            "for spec in list_specs():\n"
            "    model = build_backbone(spec.name, 'tiny')\n"
            "    print('BUILT', spec.name, sum(p.numel() for p in model.parameters()))\n"
            "    check_backbone_against_spec(spec.name)\n"
            "    print('CHECKED', spec.name)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("BUILT") == len(rows) - 1
        assert "CHECKED example-dit" in out.stdout
    finally:
        pip("uninstall", "-y", "cameo-example-backbone", "cameo-broken-plugin")
    names = {row["name"] for row in _cli_json("backbones", "list")}
    assert "broken" not in names
