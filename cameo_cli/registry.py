"""The registries of backbones (entry-point group `cameo.backbones`) and alignment methods
(`cameo.alignments`), discovered the same way.

A backbone entry point names a `BackboneSpec`, a light object (no torch import) that
describes the backbone and names its adapter class as "module:Class"; the adapter module is imported
only when that backbone is built. For development, `CAMEO_BACKBONES="name=module:attr,..."`
registers specs without installing a distribution. An alignment entry point names an
`AlignmentSpec` (its method class is imported only when a run uses it); `CAMEO_ALIGNMENTS`
is its development variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cameo_cli.errors import CameoError
from cameo_cli.files import read_json
from cameo_cli.spec import AlignmentSpec as AlignmentSpec  # the plugins' path to them
from cameo_cli.spec import BackboneOptions as BackboneOptions
from cameo_cli.spec import BackboneSpec as BackboneSpec

if TYPE_CHECKING:  # (not cameo_cli.backbone: the config's option check imports this module)
    from torch import nn

    from cameo_cli.config.schema import BackboneConfig

ENTRY_POINT_GROUP = "cameo.backbones"
ENV_VARIABLE = "CAMEO_BACKBONES"
ALIGNMENT_GROUP = "cameo.alignments"
ALIGNMENT_ENV_VARIABLE = "CAMEO_ALIGNMENTS"


@dataclass(frozen=True)
class Registered:
    """One registry entry: where it came from and either its spec or why it is broken."""

    name: str
    source: str  # distribution name, or the environment variable's name
    version: str
    spec: Any  # BackboneSpec or AlignmentSpec; None when broken
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.spec is not None


@dataclass(frozen=True)
class _Kind:
    """One registry: what it holds, its entry-point group and its environment variable."""

    noun: str  # "backbone" or "alignment method", for messages
    group: str
    variable: str
    spec_type: type


BACKBONES = _Kind("backbone", ENTRY_POINT_GROUP, ENV_VARIABLE, BackboneSpec)
ALIGNMENTS = _Kind("alignment method", ALIGNMENT_GROUP, ALIGNMENT_ENV_VARIABLE, AlignmentSpec)


def _entry_points(kind: _Kind) -> list[tuple[EntryPoint, str, str]]:
    """(entry point, distribution name, version) for the group and the environment variable."""
    found = []
    for ep in entry_points(group=kind.group):
        dist = ep.dist
        found.append((ep, dist.name if dist else "unknown", dist.version if dist else ""))
    for item in filter(None, (s.strip() for s in os.environ.get(kind.variable, "").split(","))):
        name, sep, value = item.partition("=")
        if not sep or ":" not in value:
            raise CameoError(f"{kind.variable}: '{item}' is not of the form name=module:attribute")
        ep = EntryPoint(name=name.strip(), value=value.strip(), group=kind.group)
        found.append((ep, kind.variable, ""))
    return found


def _load(kind: _Kind, ep: EntryPoint, source: str, version: str) -> Registered:
    try:
        spec = ep.load()
    except Exception as error:  # a broken plugin must never break the others
        message = f"{type(error).__name__}: {error}"
        return Registered(ep.name, source, version, None, message)
    if not isinstance(spec, kind.spec_type):
        message = f"{ep.value} is a {type(spec).__name__}, not a cameo {kind.spec_type.__name__}"
        return Registered(ep.name, source, version, None, message)
    if spec.name != ep.name:
        message = f"entry point '{ep.name}' names a spec called '{spec.name}'"
        return Registered(ep.name, source, version, None, message)
    return Registered(ep.name, source, version, spec)


def _discover(kind: _Kind) -> dict[str, Registered]:
    registered: dict[str, Registered] = {}
    for ep, source, version in _entry_points(kind):
        if ep.name in registered:
            other = registered[ep.name].source
            raise CameoError(
                f"{kind.noun} '{ep.name}' is registered twice: by '{other}' and by '{source}'; "
                "uninstall one of them"
            )
        registered[ep.name] = _load(kind, ep, source, version)
    return dict(sorted(registered.items()))


def _get(kind: _Kind, name: str) -> Any:
    registered = _discover(kind)
    entry = registered.get(name)
    if entry is None:
        known = ", ".join(registered) or "none"
        raise CameoError(f"unknown {kind.noun} '{name}' (known: {known})")
    if entry.spec is None:
        raise CameoError(f"{kind.noun} '{name}' from '{entry.source}' is broken: {entry.error}")
    return entry.spec


def discover() -> dict[str, Registered]:
    """Every registered backbone by name, broken ones included; duplicates are an error."""
    return _discover(BACKBONES)


def get_spec(name: str) -> BackboneSpec:
    """The spec of backbone `name`, or a CameoError listing the known backbones."""
    return _get(BACKBONES, name)


def discover_alignments() -> dict[str, Registered]:
    """Every registered alignment method by name (group `cameo.alignments`, variable
    `CAMEO_ALIGNMENTS`), broken ones included; duplicates are an error."""
    return _discover(ALIGNMENTS)


def get_alignment_spec(name: str) -> AlignmentSpec:
    """The spec of alignment method `name`, or a CameoError listing the known methods."""
    return _get(ALIGNMENTS, name)


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
) -> nn.Module:
    """Build backbone `name` (importing only its adapter module): a
    `cameo_cli.backbone.MultiViewBackbone`."""
    if variant not in ("tiny", "full"):
        raise CameoError(f"unknown backbone variant '{variant}' (known: tiny, full)")
    adapter = get_spec(name).load_adapter()
    return adapter.build(variant, in_channels=in_channels, pretrained=pretrained, **options)


def backbone_from_recipe(config: BackboneConfig, *, in_channels: int = 4) -> nn.Module:
    """The backbone a recipe's `backbone:` section describes (name, variant, pretrained,
    qk_norm and its `options`): the one builder of training, diagnose and the layer table."""
    return build_backbone(
        config.name,
        config.variant,
        in_channels=in_channels,
        pretrained=config.pretrained,
        qk_norm=config.qk_norm,
        **config.options,
    )


def load_backbone(folder: str | os.PathLike[str]) -> nn.Module:
    """Load a backbone saved with `MultiViewBackbone.save_pretrained` from a local folder."""
    manifest = Path(folder) / "cameo_backbone.json"
    if not manifest.is_file():
        raise CameoError(f"{folder}: not a cameo backbone folder (no cameo_backbone.json)")
    try:
        name = read_json(manifest, "backbone manifest")["name"]
    except (TypeError, KeyError) as error:
        raise CameoError(f"{manifest}: unreadable backbone manifest ({error})") from None
    return get_spec(name).load_adapter().from_pretrained(folder)
