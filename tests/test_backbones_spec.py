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


def test_a_spec_path_the_model_lacks_fails(monkeypatch):
    """The check is not vacuous: a spec declaring a layer the model does not have fails."""
    cat3d = registry.get_spec("cat3d")
    spec = dataclasses.replace(cat3d, layer_paths=(*cat3d.layer_paths[:-1], "up_blocks.9.attn1"))
    monkeypatch.setattr("cameo_cli.testing.get_spec", lambda name: spec)
    monkeypatch.setattr(Cat3D, "spec", spec)
    with pytest.raises(AssertionError, match="its spec declares"):
        check_backbone_against_spec("cat3d")


def test_hooks_that_do_not_follow_the_spec_fail(monkeypatch):
    """An adapter hooking the spec's paths with other per-view flags than declared fails."""
    hooks_of = Cat3D.spec_hooks

    def all_multiview(model):
        return [dataclasses.replace(hook, multiview=True) for hook in hooks_of(model)]

    monkeypatch.setattr(Cat3D, "spec_hooks", staticmethod(all_multiview))
    with pytest.raises(AssertionError, match="its spec declares"):
        check_backbone_against_spec("cat3d")


def test_an_adapter_with_another_spec_fails(monkeypatch):
    other = dataclasses.replace(registry.get_spec("cat3d"), default_layer=9)
    monkeypatch.setattr("cameo_cli.testing.get_spec", lambda name: other)
    with pytest.raises(AssertionError, match="is not the registered spec"):
        check_backbone_against_spec("cat3d")
