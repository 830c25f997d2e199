"""`cameo export`: a self-contained model folder from a run or checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from cameo_cli.commands.options import path_option


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@path_option("--out", required=True, help="Export folder (created).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
def export(source: Path, out: Path, overwrite: bool) -> None:
    """Export a run or checkpoint as a self-contained model folder.

    SOURCE is a run folder (its latest checkpoint) or one checkpoint folder.
    The folder holds the backbone (EMA weights if kept), the codec's weights, the scheduler
    config, the resolved recipe, the cameo version and a model card (README.md); copied
    anywhere, `cameo sample --checkpoint OUT` and `cameo evaluate` load it.
    """
    from rich.console import Console

    from cameo_cli.export.job import run_export

    folder = run_export(source, out, overwrite=overwrite)
    Console(stderr=True).print(f"[green]exported[/green] {source} to {folder}")
