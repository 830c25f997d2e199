"""`cameo backbones list|show`: the registered backbones and their attention layers."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from cameo_cli.commands.listing import list_command, option_names, text
from cameo_cli.registry import discover, get_spec


@click.group()
def backbones() -> None:
    """Registered backbones (built-in and plugins)."""


def _fields(spec) -> dict:
    return {
        "default_layer": spec.default_layer if spec else None,
        "hook": spec.default_hook if spec else None,
        "options": option_names(spec.parameters if spec else None),
    }


list_command(
    backbones,
    "List every registered backbone; broken plugins are shown with their error.",
    discover,
    _fields,
    [("default layer", "default_layer", text), ("hook location", "hook", text)],
    "cameo backbones",
)


@backbones.command("show")
@click.argument("name")
@click.option("--resolution", default=512, show_default=True, help="Input image size (px).")
@click.option(
    "--config",
    "variant",
    type=click.Choice(["tiny", "full"]),
    default="full",
    show_default=True,
    help="Which configuration to describe (built on the meta device: no memory).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_backbone(name: str, resolution: int, variant: str, as_json: bool) -> None:
    """Show one backbone's layer table: token grid, heads, multi-view or per-view."""
    from cameo_cli.layer_table import describe_layers

    spec = get_spec(name)
    layers = describe_layers(name, variant, resolution)
    if as_json:
        payload = {
            "name": spec.name,
            "description": spec.description,
            "default_layer": spec.default_layer,
            "config": variant,
            "resolution": resolution,
            "layers": [layer.__dict__ | {"grid": list(layer.grid)} for layer in layers],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    console = Console()
    console.print(f"[bold]{spec.name}[/]: {spec.description}")
    table = Table(title=f"self-attention layers ({variant} config, {resolution} px)")
    for column in ("layer", "module path", "tokens/view", "heads × dim", "attention"):
        table.add_column(column, overflow="fold")
    for layer in layers:
        mark = " [bold yellow]← default[/]" if layer.default else ""
        table.add_row(
            str(layer.index),
            layer.path + mark,
            f"{layer.grid[0]}×{layer.grid[1]}",
            f"{layer.heads} × {layer.head_dim}",
            "multi-view (3D)" if layer.multiview else "per-view",
        )
    console.print(table)
