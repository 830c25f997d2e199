"""The `cameo` command: a Click group whose subcommands are imported on first use."""

from __future__ import annotations

import importlib
import logging

import click

from cameo_cli import __version__

# name -> "module:attribute"; each subcommand lives in cameo_cli/commands/.
COMMANDS: dict[str, str] = {
    "recipes": "cameo_cli.commands.recipes:recipes",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when it is invoked or listed in help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module_name, _, attr = COMMANDS[name].partition(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cameo")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """cameo: train multi-view diffusion models with correspondence-attention alignment."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
