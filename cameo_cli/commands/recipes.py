"""`cameo recipes`: list the shipped recipes and print one resolved."""

from __future__ import annotations

import click

from cameo_cli.config import Recipe, list_recipes, load_recipe, recipe_to_yaml


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
@click.option(
    "--memory",
    is_flag=True,
    help="Instead of the recipe: the memory per device of training it, under ddp and fsdp.",
)
@click.option(
    "--processes",
    type=int,
    default=2,
    show_default=True,
    help="--memory: devices the run is spread over (train.batch_size is split over them).",
)
def show(name: str, overrides: tuple[str, ...], memory: bool, processes: int) -> None:
    """Print recipe NAME (a shipped name or a YAML file) with every value resolved."""
    recipe = load_recipe(name, overrides)
    if memory:
        print_memory(name, recipe, processes)
    else:
        click.echo(recipe_to_yaml(recipe), nl=False)


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**27 else f"{size / 2**20:.1f} MiB"


def print_memory(name: str, recipe: Recipe, processes: int) -> None:
    """The table of `cameo_cli.train.memory.memory_plan`."""
    from rich.console import Console
    from rich.table import Table

    from cameo_cli.train.memory import STRATEGIES, memory_plan

    plan = memory_plan(recipe, processes)
    table = Table(
        title=f"{name}: memory per device, {processes} process(es), "
        f"{plan.per_device_batch} sample(s) of {recipe.data.num_views} views each",
        caption="ddp: every device holds the whole state; fsdp (train.sharding=fsdp): "
        "parameters split along their first dimension over the processes",
    )
    table.add_column("")
    for strategy in STRATEGIES:
        table.add_column(strategy, justify="right")
    rows = [
        ("weights (fp32)", "weights"),
        ("gradients (fp32)", "gradients"),
        ("AdamW state (2 fp32 moments)", "optimizer"),
        (f"EMA (fp32; train.ema {'on' if recipe.train.ema else 'off'})", "ema"),
    ]
    for label, key in rows:
        table.add_row(label, *(_gib(plan.state[s][key]) for s in STRATEGIES))
    table.add_row(f"frozen codec ({plan.frozen_source})", *[_gib(plan.frozen)] * len(STRATEGIES))
    how = "measured on the CPU" if plan.activations_how == "measured" else "estimated, fake tensors"
    table.add_row(f"activations ({how})", *[_gib(plan.activations)] * len(STRATEGIES))
    table.add_row("[bold]total", *(f"[bold]{_gib(plan.total(s))}" for s in STRATEGIES))
    console = Console()
    console.print(f"trained parameters: {plan.trainable:,}")
    console.print(table)
