"""`cameo train`: train a multi-view diffusion backbone, with CAMEO or as the baseline."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from cameo_cli.commands.options import path_option
from cameo_cli.layer_selection import LayerChoice, LayerSelection

PAPER_RECIPE = "{backbone}-re10k"  # the paper's recipe of each built-in backbone


def _layer_value(ctx: click.Context, param: click.Parameter, value: str | None) -> LayerChoice:
    """`--layer`: parsed by the one layer syntax (`cameo_cli.layer_selection`), passed on
    in the form a recipe stores."""
    try:
        return LayerSelection.parse(value).value
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@click.command()
@click.option(
    "--recipe",
    "recipe_name",
    metavar="NAME|FILE",
    help="Shipped recipe name or YAML file (default: the backbone's paper recipe).",
)
@click.option("--backbone", metavar="NAME", help="Backbone to train (see `cameo backbones list`).")
@click.option(
    "--layer",
    callback=_layer_value,
    metavar="L[,L-M...]|all|auto[:K]",
    help="Supervised self-attention layer(s) (default: the backbone's; auto: diagnose's pick; "
    "auto:K: its K best).",
)
@click.option(
    "--align",
    metavar="NAME",
    help="Alignment method: cameo, none (the baseline), repa, geometry-forcing or a plugin's "
    "(see `cameo alignments list`).",
)
@path_option(
    "--dataset",
    help="Prepared dataset folder (written by `cameo prepare`).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe value, e.g. --set train.batch_size=4 (repeatable).",
)
@path_option(
    "--output",
    help="Run folder (default: runs/<recipe>-<date>-<time>).",
)
@click.option("--resume", metavar="latest|PATH", help="Continue a run: its latest or a checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--steps", type=click.IntRange(min=1), help="Total optimizer steps (train.steps).")
def train(
    recipe_name: str | None,
    backbone: str | None,
    layer: LayerChoice,
    align: str | None,
    dataset: Path | None,
    overrides: tuple[str, ...],
    output: Path | None,
    resume: str | None,
    overwrite: bool,
    steps: int | None,
) -> None:
    """Train a multi-view diffusion model, with or without CAMEO.

    CAMEO aligns one layer's attention with geometry.
    Single process: `cameo train ...`; several GPUs or nodes: `accelerate launch -m cameo_cli
    train ...` (DDP from your accelerate config); two CPU processes: `torchrun
    --nproc_per_node 2 -m cameo_cli train ...`. `--set train.sharding=fsdp` shards the
    model over the processes (FSDP2); checkpoints stay full-state.
    """
    from cameo_cli.config import load_recipe
    from cameo_cli.errors import CameoError
    from cameo_cli.registry import get_alignment_spec, get_spec
    from cameo_cli.run_folder.layout import CONFIG, resolve_checkpoint
    from cameo_cli.train.loop import run_training

    if backbone is not None:
        get_spec(backbone)  # an unknown name is reported before any recipe is read
    if align is not None:
        get_alignment_spec(align)
    flags = {
        "backbone.name": ("--backbone", backbone),
        "alignment.layer": ("--layer", layer),
        "alignment.method": ("--align", align),
        "data.dataset": ("--dataset", None if dataset is None else str(dataset)),
        "train.steps": ("--steps", steps),
    }
    values = {key: flag for key, flag in flags.items() if flag[1] is not None}
    if recipe_name is None and resume is not None:
        if output is None and resume == "latest":
            raise CameoError("--resume latest needs --output RUN (the run to continue)")
        source = resolve_checkpoint(output if resume == "latest" else resume)
        recipe_name = str(source / CONFIG)
    elif recipe_name is None:
        recipe_name = PAPER_RECIPE.format(backbone=backbone or "cat3d")
    recipe = load_recipe(recipe_name, overrides, values)
    if output is None:
        if resume is not None and resume != "latest":
            raise CameoError("--resume PATH needs --output RUN (where the run continues)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise CameoError("several processes need one run folder: pass --output RUN")
        stem = Path(recipe_name).stem
        output = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    last = run_training(recipe, output, resume=resume, overwrite=overwrite, command=sys.argv)
    if os.environ.get("RANK", "0") == "0":  # once, also under torchrun / accelerate launch
        click.echo(
            f"trained {recipe.train.steps} steps; run folder {output}, last checkpoint {last}"
        )
