"""The one way registry listings print: a rich table of entries, or their JSON rows."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

Column = tuple[str, str, Callable[[Any], str]]  # (header, JSON key, cell text from the value)


def text(value: Any) -> str:
    """A table cell: "" for None, a comma list for a list, str() otherwise."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def option_names(parameters: type | None) -> list[str]:
    """The options a spec's `parameters` dataclass declares (what `*.options` may set)."""
    return [f.name for f in dataclasses.fields(parameters)] if parameters else []


def print_entries(
    entries: Iterable[Any],
    fields: Callable[[Any], dict[str, Any]],
    columns: list[Column],
    title: str,
    as_json: bool,
) -> None:
    """One row per registry entry: `fields(spec)` (spec None for a broken plugin) plus its
    name, distribution, version, status, error and description."""
    rows = []
    for entry in entries:
        spec = entry.spec
        rows.append(
            {
                "name": entry.name,
                **fields(spec),
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
    table = Table(title=title)
    headers = ["name", *(header for header, _, _ in columns), "distribution", "status"]
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        status = "[green]ok[/]" if row["status"] == "ok" else f"[red]broken[/]: {row['error']}"
        cells = [cell(row[key]) for _, key, cell in columns]
        distribution = f"{row['distribution']} {row['version']}".strip()
        table.add_row(row["name"], *cells, distribution, status)
    Console().print(table)


def list_command(
    group: click.Group,
    summary: str,
    discover: Callable[[], dict[str, Any]],
    fields: Callable[[Any], dict[str, Any]],
    columns: list[Column],
    title: str,
) -> None:
    """Add `list [--json]` (help `summary`) to `group`: `print_entries` over `discover()`."""

    @group.command("list", help=summary)
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def list_entries(as_json: bool) -> None:
        print_entries(discover().values(), fields, columns, title, as_json)
