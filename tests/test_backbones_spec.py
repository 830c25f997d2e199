"""Every registered backbone (built-in or installed plugin) builds as its light spec says."""

from __future__ import annotations

import dataclasses

import pytest

from cameo.backbones.cat3d import Cat3D
from cameo_cli import registry
from cameo_cli.testing import check_backbone_against_spec

NAMES = [spec.name for spec in registry.list_specs()]


@pytest.mark.parametrize("name", NAMES)
def test_backbone_matches_its_spec(name: str):
    check_backbone_against_spec(name)


def test_builtin_backbones_are_checked():
    assert {"cat3d", "mvgenmaster", "hunyuan-dit"} <= set(NAMES)


@pytest.mark.parametrize("field", ["layer_paths", "per_view_layers"])
def test_a_spec_that_disagrees_with_its_model_fails(monkeypatch, field: str):
    """The check is not vacuous: a spec declaring other layers than the model has fails."""
    cat3d = registry.get_spec("cat3d")
    value = {"layer_paths": cat3d.layer_paths[:-1], "per_view_layers": (0, 1)}[field]
    spec = dataclasses.replace(cat3d, **{field: value})
    monkeypatch.setattr("cameo_cli.testing.get_spec", lambda name: spec)
    monkeypatch.setattr(Cat3D, "spec", spec)
    with pytest.raises(AssertionError, match="its spec declares"):
        check_backbone_against_spec("cat3d")


def test_an_adapter_with_another_spec_fails(monkeypatch):
    other = dataclasses.replace(registry.get_spec("cat3d"), default_layer=9)
    monkeypatch.setattr("cameo_cli.testing.get_spec", lambda name: other)
    with pytest.raises(AssertionError, match="is not the registered spec"):
        check_backbone_against_spec("cat3d")
