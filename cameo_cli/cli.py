"""The `cameo` command: a Click group whose subcommands are imported on first use."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging

import click

from cameo_cli import __version__

# name -> "module:attribute"; each subcommand lives in cameo_cli/commands/.
COMMANDS: dict[str, str] = {
    "backbones": "cameo_cli.commands.backbones:backbones",
    "alignments": "cameo_cli.commands.alignments:alignments",
    "recipes": "cameo_cli.commands.recipes:recipes",
    "prepare": "cameo_cli.commands.prepare:prepare",
    "train": "cameo_cli.commands.train:train",
    "sample": "cameo_cli.commands.sample:sample",
    "evaluate": "cameo_cli.commands.evaluate:evaluate",
    "diagnose": "cameo_cli.commands.diagnose:diagnose",
    "compare": "cameo_cli.commands.compare:compare",
    "export": "cameo_cli.commands.export:export",
}


def summary(name: str) -> str:
    """The first line of subcommand `name`'s docstring (its short help in Click's listing),
    read from the module's source without importing it."""
    module_name, _, attr = COMMANDS[name].partition(":")
    source = importlib.util.find_spec(module_name).loader.get_source(module_name)
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == attr:
            return (ast.get_docstring(node) or "").partition("\n")[0]
    raise LookupError(f"{module_name} defines no function {attr!r}")


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module_name, _, attr = COMMANDS[name].partition(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, summary(name)) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cameo")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """cameo: train multi-view diffusion models with correspondence-attention alignment."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
