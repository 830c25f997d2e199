"""`cameo evaluate`: PSNR / SSIM / LPIPS of sampled views on a fixed evaluation index."""

from __future__ import annotations

from pathlib import Path

import click

from cameo_cli.commands.options import (
    checkpoint_option,
    device_option,
    path_option,
    scheduler_option,
)


@click.command()
@checkpoint_option
@path_option(
    "--dataset",
    required=True,
    help="A folder written by `cameo prepare`.",
)
@path_option(
    "--index",
    help="Evaluation index JSON {scene: {context, target}} [DATASET/eval_index.json].",
)
@click.option(
    "--index-frames",
    type=click.Choice(["prepared", "source"]),
    help="What --index holds: positions in the prepared scenes (as eval_index.json) or the "
    "source's frame numbers (pixelSplat's index as released, null entries skipped). Needed "
    "once prepare dropped frames.",
)
@click.option(
    "--exclude-context-targets",
    is_flag=True,
    help="Leave out targets equal to a context frame (counted and reported either way).",
)
@click.option(
    "--score-size",
    type=click.Choice(["recipe", "pixelsplat"]),
    default="recipe",
    show_default=True,
    help="recipe: the recipe's resolution (square centre crop); pixelsplat: 256x256 LANCZOS "
    "from the stored frames, as pixelSplat and MVSplat score.",
)
@click.option(
    "--reference-depth",
    type=click.Choice(["dataset", "vggt", "none"]),
    default="dataset",
    show_default=True,
    help="Depth for geometric priors (MVGenMaster): the dataset's stored depth of the "
    "references; vggt: estimated by VGGT from the reference images only, scaled to their "
    "cameras (2+ references); none: zero priors.",
)
@path_option("--vggt-weights", help="Local VGGT-1B weights (file or folder) for vggt.")
@click.option("--metrics", help="Comma list of psnr, ssim, lpips [recipe: evaluate.metrics].")
@path_option("--out", required=True, help="Results folder (resumable).")
@scheduler_option
@click.option("--steps", type=click.IntRange(min=1), help="Sampling steps [recipe].")
@click.option("--guidance", type=float, help="Camera guidance scale [recipe].")
@click.option("--seed", type=int, help="Noise seed [recipe].")
@click.option("--lpips-net", type=click.Choice(["vgg", "alex"]), help="LPIPS backbone [vgg].")
@path_option(
    "--lpips-weights",
    help="torchvision ImageNet weights for LPIPS [$TORCH_HOME/hub/checkpoints/...].",
)
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N scenes.")
@click.option("--save-images", is_flag=True, help="Also write the generated views.")
@device_option
@click.option("--overwrite", is_flag=True, help="Discard an existing evaluation in --out.")
def evaluate(
    checkpoint: Path,
    dataset: Path,
    index: Path | None,
    index_frames: str | None,
    exclude_context_targets: bool,
    score_size: str,
    reference_depth: str,
    vggt_weights: Path | None,
    metrics: str | None,
    out: Path,
    scheduler: str | None,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    lpips_net: str | None,
    lpips_weights: Path | None,
    limit: int | None,
    save_images: bool,
    device: str | None,
    overwrite: bool,
) -> None:
    """Score sampled target views on a dataset's evaluation index.

    Samples the target views of every scene in the evaluation index and scores them.
    Writes results.json and results.csv (per scene and mean, with the metric
    configuration) and prints a table; rerunning resumes where it stopped.
    """
    from rich.console import Console

    from cameo_cli.evaluate.job import EvaluateRequest, parse_metrics, run_evaluation

    request = EvaluateRequest(
        checkpoint=checkpoint,
        dataset=dataset,
        out=out,
        index=index,
        index_frames=index_frames,
        exclude_context_targets=exclude_context_targets,
        score_size=score_size,
        reference_depth=reference_depth,
        vggt_weights=vggt_weights,
        metrics=parse_metrics(metrics) if metrics is not None else None,
        steps=steps,
        guidance=guidance,
        seed=seed,
        scheduler=scheduler,
        lpips_net=lpips_net,
        lpips_weights=lpips_weights,
        limit=limit,
        save_images=save_images,
        overwrite=overwrite,
        device=device,
    )
    run_evaluation(request, Console())
