"""`cameo compare`: held-out curves of several runs, grouped into methods, and the steps each
method needs to reach the baseline's best value."""

from __future__ import annotations

from pathlib import Path

import click

from cameo_cli.commands.options import path_option
from cameo_cli.errors import CameoError


def parse_group(text: str) -> tuple[str, str]:
    """ "cameo=runs/cameo-*" -> ("cameo", "runs/cameo-*")."""
    name, sep, glob = text.partition("=")
    if not sep or not name.strip() or not glob.strip():
        raise CameoError(f"--group: '{text}' is not NAME=GLOB")
    return name.strip(), glob.strip()


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@path_option("--out", required=True, help="Output folder (curves, compare.json, compare.csv).")
@click.option(
    "--group",
    "groups",
    multiple=True,
    help="NAME=GLOB: runs whose path or folder name matches GLOB form method NAME "
    "(repeat; default: group by recipe, seeds together).",
)
@click.option("--baseline", help="The baseline method [the one without alignment].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
def compare(
    runs: tuple[Path, ...],
    out: Path,
    groups: tuple[str, ...],
    baseline: str | None,
    overwrite: bool,
) -> None:
    """Compare runs by method: held-out curves, steps to a baseline.

    Plots every held-out metric of RUNS against steps and tabulates the steps each method
    needs to reach the baseline's best value (ratio with a bootstrap 95 % interval).
    """
    from rich.console import Console
    from rich.table import Table

    from cameo_cli.compare.job import compare_runs

    result = compare_runs(
        list(runs),
        out,
        groups=[parse_group(text) for text in groups],
        baseline=baseline,
        overwrite=overwrite,
    )
    table = Table(title=f"steps to the best held-out value of '{result['baseline']}'")
    for column in ("metric", "method", "seeds", "baseline best", "steps", "baseline steps",
                   "ratio", "95 % CI"):  # fmt: skip
        table.add_column(column)
    for row in result["steps_to_baseline_best"]:
        low, high = row["ratio_ci95"]
        table.add_row(
            row["metric"],
            row["method"],
            str(row["seeds"]),
            f"{row['baseline_best']:.4g}",
            _steps(row["steps"]),
            _steps(row["baseline_steps"]),
            f"{row['ratio']:.2f}" if row["ratio"] == row["ratio"] else "not reached",
            f"{low:.2f}-{high:.2f}" if low == low else "-",
        )
    console = Console()
    console.print(table)
    if result["reference_lines"]:
        console.print(_lines_table(result))
    console.print(f"curves and tables in {out}")


def _lines_table(result: dict):
    """The reference lines the runs logged: their mean over all runs and per method."""
    from rich.table import Table

    methods = list(result["methods"])
    table = Table(title="reference lines (mean over the runs that logged them)")
    for column in ("line", "all runs", *methods):
        table.add_column(column)
    for name, line in result["reference_lines"].items():
        per_method = line["methods"]
        table.add_row(
            name,
            f"{line['value']:.4g}",
            *(f"{per_method[m]:.4g}" if m in per_method else "-" for m in methods),
        )
    return table


def _steps(value: float) -> str:
    return str(int(value)) if value == value else "not reached"
