"""`cameo recipes`: list the shipped recipes and print one resolved."""

from __future__ import annotations

import click

from cameo_cli.config import list_recipes, load_recipe, recipe_to_yaml


@click.group()
def recipes() -> None:
    """List the shipped recipes, or show one resolved.

    `show` also takes any recipe file.
    """


@recipes.command("list")
def list_command() -> None:
    """List the shipped recipes with their one-line descriptions."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="cameo recipes")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, description in list_recipes():
        table.add_row(name, description)
    Console().print(table)


@recipes.command("show")
@click.argument("name")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one recipe value, e.g. --set alignment.weight=0.05 (repeatable).",
)
def show(name: str, overrides: tuple[str, ...]) -> None:
    """Print recipe NAME (a shipped name or a YAML file) with every value resolved."""
    click.echo(recipe_to_yaml(load_recipe(name, overrides)), nl=False)
