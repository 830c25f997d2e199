"""Checks a backbone's light registry spec against the model its adapter builds.

cameo's own tests run `check_backbone_against_spec` for every registered backbone (installed
plugins included); a plugin's tests can call it too::

    from cameo_cli.testing import check_backbone_against_spec

    def test_spec_matches_the_model():
        check_backbone_against_spec("my-backbone")
"""

from __future__ import annotations

import torch

from cameo_cli.registry import get_spec


def check_backbone_against_spec(name: str) -> None:
    """Raise AssertionError unless registered backbone `name` builds as its spec declares.

    Both configs are built on the meta device (no memory, no weights). The full one must have
    every module of `spec.layer_paths` (attention modules) and hook exactly those, in order,
    use `spec.default_layer` and attend within each view on exactly `spec.per_view_layers`;
    the tiny one may have fewer layers, but each must be a layer of the full config with the
    same multi-view flag, and its default layer must exist.
    Both must carry the spec's name.
    """
    spec = get_spec(name)
    adapter = spec.load_adapter()
    assert adapter.spec == spec, f"{spec.adapter}.spec is not the registered spec of '{name}'"
    assert adapter.name == spec.name, f"{spec.adapter}.name is '{adapter.name}', not '{name}'"
    with torch.device("meta"):
        full = adapter.build("full")
        tiny = adapter.build("tiny")
    modules = dict(full.model.named_modules())
    for path in spec.layer_paths:
        assert hasattr(modules.get(path), "heads"), (
            f"'{name}' full config has no attention module '{path}', its spec declares it"
        )
    paths = [hook.path for hook in full.hooks]
    assert paths == list(spec.layer_paths), (
        f"'{name}' full config hooks {paths}, its spec declares {list(spec.layer_paths)}"
    )
    assert [hook.index for hook in full.hooks] == list(range(len(paths))), (
        f"'{name}': hook indices are not 0..{len(paths) - 1} in order"
    )
    assert full.default_layer == spec.default_layer, (
        f"'{name}' full config defaults to layer {full.default_layer}, "
        f"its spec to {spec.default_layer}"
    )
    per_view = sorted(hook.index for hook in full.hooks if not hook.multiview)
    assert per_view == sorted(spec.per_view_layers), (
        f"'{name}' full config attends per view on layers {per_view}, "
        f"its spec declares {sorted(spec.per_view_layers)}"
    )
    multiview_by_path = {hook.path: hook.multiview for hook in full.hooks}
    for hook in tiny.hooks:
        assert multiview_by_path.get(hook.path) == hook.multiview, (
            f"'{name}' tiny layer {hook.index} ({hook.path}, multiview={hook.multiview}) "
            "is not a layer of the full config with the same multi-view flag"
        )
    assert 0 <= tiny.default_layer < len(tiny.hooks), (
        f"'{name}' tiny config defaults to layer {tiny.default_layer} of {len(tiny.hooks)}"
    )
    for backbone in (full, tiny):
        table = backbone.layers(512)
        assert [info.index for info in table if info.default] == [backbone.default_layer], (
            f"'{name}' {backbone.variant}: the layer table marks "
            f"{[info.index for info in table if info.default]} as default"
        )
