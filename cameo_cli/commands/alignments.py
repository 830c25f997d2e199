"""`cameo alignments list`: the registered alignment methods (reads only their specs)."""

from __future__ import annotations

import dataclasses
import json

import click
from rich.console import Console
from rich.table import Table

from cameo_cli.registry import discover_alignments


@click.group()
def alignments() -> None:
    """Registered alignment methods (built-in and plugins)."""


@alignments.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_alignments(as_json: bool) -> None:
    """List every registered alignment method; broken plugins are shown with their error."""
    rows = []
    for entry in discover_alignments().values():
        spec = entry.spec
        parameters = spec.parameters if spec else None
        rows.append(
            {
                "name": entry.name,
                "needs": list(spec.needs) if spec else None,
                "options": [f.name for f in dataclasses.fields(parameters)] if parameters else [],
                "distribution": entry.source,
                "version": entry.version,
                "status": "ok" if entry.ok else "broken",
                "error": entry.error,
                "description": spec.description if spec else None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="cameo alignment methods")
    for column in ("name", "needs", "description", "distribution", "status"):
        table.add_column(column, overflow="fold")
    for row in rows:
        status = "[green]ok[/]" if row["status"] == "ok" else f"[red]broken[/]: {row['error']}"
        table.add_row(
            row["name"],
            ", ".join(row["needs"] or []),
            row["description"] or "",
            f"{row['distribution']} {row['version']}".strip(),
            status,
        )
    Console().print(table)
