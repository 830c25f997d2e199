"""Backbone registry: discovery through the `cameo.backbones` entry-point group.

An entry point names a `BackboneSpec`, a light object (no torch import) that describes the
backbone and names its adapter class as "module:Class"; the adapter module is imported
only when that backbone is built. For development, `CAMEO_BACKBONES="name=module:attr,..."`
registers specs without installing a distribution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cameo_cli.errors import CameoError
from cameo_cli.io import read_json
from cameo_cli.spec import BackboneSpec as BackboneSpec  # the plugins' path to it

if TYPE_CHECKING:
    from cameo_cli.backbone import MultiViewBackbone

ENTRY_POINT_GROUP = "cameo.backbones"
ENV_VARIABLE = "CAMEO_BACKBONES"


@dataclass(frozen=True)
class RegisteredBackbone:
    """One registry entry: where it came from and either its spec or why it is broken."""

    name: str
    source: str  # distribution name, or "CAMEO_BACKBONES"
    version: str
    spec: BackboneSpec | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.spec is not None


def _entry_points() -> list[tuple[EntryPoint, str, str]]:
    """(entry point, distribution name, version) for the group and the environment variable."""
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        found.append((ep, dist.name if dist else "unknown", dist.version if dist else ""))
    for item in filter(None, (s.strip() for s in os.environ.get(ENV_VARIABLE, "").split(","))):
        name, sep, value = item.partition("=")
        if not sep or ":" not in value:
            raise CameoError(f"{ENV_VARIABLE}: '{item}' is not of the form name=module:attribute")
        ep = EntryPoint(name=name.strip(), value=value.strip(), group=ENTRY_POINT_GROUP)
        found.append((ep, ENV_VARIABLE, ""))
    return found


def _load(ep: EntryPoint, source: str, version: str) -> RegisteredBackbone:
    try:
        spec = ep.load()
    except Exception as error:  # a broken plugin must never break the others
        message = f"{type(error).__name__}: {error}"
        return RegisteredBackbone(ep.name, source, version, None, message)
    if not isinstance(spec, BackboneSpec):
        message = f"{ep.value} is a {type(spec).__name__}, not a cameo BackboneSpec"
        return RegisteredBackbone(ep.name, source, version, None, message)
    if spec.name != ep.name:
        message = f"entry point '{ep.name}' names a spec called '{spec.name}'"
        return RegisteredBackbone(ep.name, source, version, None, message)
    return RegisteredBackbone(ep.name, source, version, spec)


def discover() -> dict[str, RegisteredBackbone]:
    """Every registered backbone by name, broken ones included; duplicates are an error."""
    registered: dict[str, RegisteredBackbone] = {}
    for ep, source, version in _entry_points():
        if ep.name in registered:
            other = registered[ep.name].source
            raise CameoError(
                f"backbone '{ep.name}' is registered twice: by '{other}' and by '{source}'; "
                "uninstall one of them"
            )
        registered[ep.name] = _load(ep, source, version)
    return dict(sorted(registered.items()))


def get_spec(name: str) -> BackboneSpec:
    """The spec of backbone `name`, or a CameoError listing the known backbones."""
    registered = discover()
    entry = registered.get(name)
    if entry is None:
        known = ", ".join(registered) or "none"
        raise CameoError(f"unknown backbone '{name}' (known: {known})")
    if entry.spec is None:
        raise CameoError(f"backbone '{name}' from '{entry.source}' is broken: {entry.error}")
    return entry.spec


def list_specs() -> list[BackboneSpec]:
    """The specs of every working backbone, sorted by name."""
    return [entry.spec for entry in discover().values() if entry.spec is not None]


def build_backbone(
    name: str,
    variant: str = "tiny",
    *,
    in_channels: int = 4,
    pretrained: str | None = None,
    **options: Any,
) -> MultiViewBackbone:
    """Build backbone `name` (importing only its adapter module)."""
    if variant not in ("tiny", "full"):
        raise CameoError(f"unknown backbone variant '{variant}' (known: tiny, full)")
    adapter = get_spec(name).load_adapter()
    return adapter.build(variant, in_channels=in_channels, pretrained=pretrained, **options)


def load_backbone(folder: str | os.PathLike[str]) -> MultiViewBackbone:
    """Load a backbone saved with `MultiViewBackbone.save_pretrained` from a local folder."""
    manifest = Path(folder) / "cameo_backbone.json"
    if not manifest.is_file():
        raise CameoError(f"{folder}: not a cameo backbone folder (no cameo_backbone.json)")
    try:
        name = read_json(manifest, "backbone manifest")["name"]
    except (TypeError, KeyError) as error:
        raise CameoError(f"{manifest}: unreadable backbone manifest ({error})") from None
    return get_spec(name).load_adapter().from_pretrained(folder)
