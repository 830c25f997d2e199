"""`cameo alignments list`: the registered alignment methods (reads only their specs)."""

from __future__ import annotations

import click

from cameo_cli.commands.listing import option_names, print_entries, text
from cameo_cli.registry import discover_alignments


@click.group()
def alignments() -> None:
    """Registered alignment methods (built-in and plugins)."""


@alignments.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_alignments(as_json: bool) -> None:
    """List every registered alignment method; broken plugins are shown with their error."""

    def fields(spec) -> dict:
        return {
            "needs": list(spec.needs) if spec else None,
            "options": option_names(spec.parameters if spec else None),
        }

    columns = [("needs", "needs", text), ("description", "description", text)]
    print_entries(
        discover_alignments().values(), fields, columns, "cameo alignment methods", as_json
    )
