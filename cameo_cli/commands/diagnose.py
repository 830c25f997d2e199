"""`cameo diagnose`: per-layer attention-correspondence precision, over rotation bins and
training, the identity-attention perturbation test and the recommended layer."""

from __future__ import annotations

from pathlib import Path

import click

from cameo_cli.commands.options import device_option, path_option
from cameo_cli.errors import CameoError


def parse_timesteps(text: str) -> tuple[int, ...]:
    """ "250,500,750" -> (250, 500, 750); each in [0, 999]."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CameoError(f"--timesteps: '{text}' is not a comma list of integers") from None
    if not values or any(not 0 <= value < 1000 for value in values):
        raise CameoError(f"--timesteps: '{text}': give timesteps between 0 and 999")
    return values


def parse_radii_cm(text: str) -> tuple[float, ...]:
    """ "1,2,5" -> (1.0, 2.0, 5.0); each positive."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CameoError(f"--radius-cm: '{text}' is not a comma list of numbers") from None
    if not values or any(not value > 0 for value in values):
        raise CameoError(f"--radius-cm: '{text}': give positive radii in centimetres")
    return values


@click.command(context_settings={"show_default": True})
@click.option("--backbone", required=True, help="Backbone name (see `cameo backbones`).")
@path_option(
    "--checkpoint",
    help="A run folder (latest checkpoint) or one checkpoint folder [a fresh model].",
)
@path_option(
    "--run",
    help="A run folder: score every checkpoint and plot precision against step.",
)
@path_option(
    "--dataset",
    required=True,
    help="A folder written by `cameo prepare` with geometry (point maps).",
)
@click.option(
    "--layers",
    default="all",
    help="'all', a list such as 3,8-10, 'auto' or 'auto:K' (diagnose's last pick).",
)
@click.option("--timesteps", default="500", help="Comma list of diffusion timesteps (0-999).")
@click.option("--perturb", is_flag=True, help="Also run the identity-attention perturbation.")
@path_option("--out", required=True, help="Output folder.")
@click.option("--variant", default="tiny", help="Config of a fresh model (tiny, full).")
@path_option(
    "--pretrained",
    help="Local diffusers folder for a model without --checkpoint.",
)
@click.option(
    "--recipe",
    help="Recipe giving codec, views and resolution without --checkpoint "
    "[quickstart-cpu for tiny, <backbone>-re10k for full].",
)
@click.option("--scenes", type=click.IntRange(min=1), default=4, help="Scenes to score.")
@click.option(
    "--sample-steps", type=click.IntRange(min=1), help="DDIM steps for --perturb [recipe]."
)
@click.option("--radius-tokens", type=float, default=1.0, help="Token-grid radius.")
@click.option("--radius-px", type=float, help="Pixel radius [1/8 of the image width].")
@click.option(
    "--radius-cm",
    default="1,2,5",
    help="3D radii in cm on metric datasets (DTU, NAVI); elsewhere the 3D radius is "
    "--radius-tokens token footprints.",
)
@click.option("--epsilon", type=float, default=1.5, help="Cycle-consistency threshold (tokens).")
@click.option(
    "--protocol",
    type=click.Choice(["views", "probe3d"]),
    default="views",
    help="views: view sets of the recipe's size (evaluation index), every view pair; "
    "probe3d: NAVI's image pairs (partner within 120 degrees, every 4th query image, "
    "query into partner only).",
)
@click.option("--seed", type=int, default=0, help="Noise seed.")
@path_option(
    "--lpips-weights",
    help="torchvision VGG16 ImageNet weights for LPIPS [$TORCH_HOME/hub/checkpoints/...].",
)
@device_option
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Recommend the K multi-view layers most precise above chance (for `cameo train "
    "--layer auto:K`).",
)
@click.option(
    "--no-recommend",
    is_flag=True,
    help="Do not store the recommended layer in $CAMEO_HOME/recommended_layers.json.",
)
def diagnose(
    backbone: str,
    checkpoint: Path | None,
    run: Path | None,
    dataset: Path,
    layers: str,
    timesteps: str,
    perturb: bool,
    out: Path,
    variant: str,
    pretrained: Path | None,
    recipe: str | None,
    scenes: int,
    sample_steps: int | None,
    radius_tokens: float,
    radius_px: float | None,
    radius_cm: str,
    epsilon: float,
    protocol: str,
    seed: int,
    lpips_weights: Path | None,
    device: str | None,
    overwrite: bool,
    top_k: int,
    no_recommend: bool,
) -> None:
    """Which layers' attention follows geometric correspondence.

    Scores each layer's argmax attention against the dataset's geometry, by rotation bin;
    with --run, over the run's checkpoints; with --perturb, the drop in sample quality
    when a layer's attention is replaced by the identity. Writes diagnose.json and PNG
    plots to --out and stores the most precise multi-view layer for
    `cameo train --layer auto`.
    """
    from rich.console import Console

    from cameo_cli.diagnose import DiagnoseRequest, Radii, run_diagnose

    request = DiagnoseRequest(
        backbone=backbone,
        dataset=dataset,
        out=out,
        checkpoint=checkpoint,
        run=run,
        variant=variant,
        pretrained=pretrained,
        recipe=recipe,
        layers=layers,
        timesteps=parse_timesteps(timesteps),
        scenes=scenes,
        perturb=perturb,
        sample_steps=sample_steps,
        radii=Radii(tokens=radius_tokens, pixels=radius_px, metric_cm=parse_radii_cm(radius_cm)),
        epsilon=epsilon,
        protocol=protocol,
        seed=seed,
        lpips_weights=lpips_weights,
        device=device,
        overwrite=overwrite,
        save_recommendation=not no_recommend,
        top_k=top_k,
    )
    console = Console()
    result = run_diagnose(request, console)
    recommended = result.get("recommended_layer")
    if recommended is not None:
        console.print(
            f"recommended layer: {recommended['layer']} ({recommended['path']}, precision "
            f"{recommended['precision']:.3f} within {result['radii']['pixels']:g} px, chance "
            f"{recommended['chance']:.3f}, lift {recommended['lift']:+.3f})"
        )
        if recommended["lift"] <= 0:
            console.print("no diagnosed multi-view layer is more precise than chance")
        if top_k > 1:
            layers = ",".join(str(row["layer"]) for row in recommended["top"])
            console.print(f"top {top_k} layers: {layers} (cameo train --layer auto:{top_k})")
    console.print(f"wrote {out}/diagnose.json and plots")
