"""`cameo alignments list`: the registered alignment methods (reads only their specs)."""

from __future__ import annotations

import click

from cameo_cli.commands.listing import list_command, option_names, text
from cameo_cli.registry import discover_alignments


@click.group()
def alignments() -> None:
    """Registered alignment methods (built-in and plugins)."""


def _fields(spec) -> dict:
    return {
        "needs": list(spec.needs) if spec else None,
        "options": option_names(spec.parameters if spec else None),
    }


list_command(
    alignments,
    "List every registered alignment method; broken plugins are shown with their error.",
    discover_alignments,
    _fields,
    [("needs", "needs", text), ("description", "description", text)],
    "cameo alignment methods",
)
