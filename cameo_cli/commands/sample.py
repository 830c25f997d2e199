"""`cameo sample`: novel views from reference images and their cameras."""

from __future__ import annotations

from pathlib import Path

import click

from cameo_cli.commands.options import (
    checkpoint_option,
    device_option,
    path_option,
    scheduler_option,
)

GREEDY_OPTIONS = ("--views", "--depths")


class GreedyCommand(click.Command):
    """Lets `--views a.png b.png` take every value up to the next option (Click options
    take one value each: this rewrites it to `--views a.png --views b.png`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rewritten: list[str] = []
        current: str | None = None
        for arg in args:
            if arg in GREEDY_OPTIONS:
                current = arg
                continue
            if arg.startswith("-") and arg != "-":
                current = None
            elif current is not None:
                rewritten.append(current)
            rewritten.append(arg)
        return super().parse_args(ctx, rewritten)


@click.command(cls=GreedyCommand)
@checkpoint_option
@path_option(
    "--views",
    required=True,
    multiple=True,
    help="Reference images (one or more: --views a.png b.png).",
)
@path_option(
    "--cameras",
    "cameras_file",
    required=True,
    help="Cameras of the references: RealEstate10K .txt, cameo JSON or transforms.json.",
)
@path_option(
    "--depths",
    multiple=True,
    help="Z-depth of each reference for geometric priors (MVGenMaster): .npy float [H, W] "
    "files, the size of their images, in the cameras' world units (0 = unknown), in --views "
    "order.",
)
@click.option(
    "--reference-depth",
    type=click.Choice(["vggt"]),
    help="Instead of --depths: the references' depth estimated by VGGT from the reference "
    "images only, scaled to their cameras (2+ references; needs --vggt-weights).",
)
@path_option("--vggt-weights", help="Local VGGT-1B weights (file or folder).")
@path_option(
    "--targets",
    help="Target cameras, in any of the camera formats.",
)
@click.option("--orbit", type=click.IntRange(min=1), help="N targets on a circle around the scene.")
@click.option("--interpolate", type=click.IntRange(min=1), help="N targets between the references.")
@path_option("--out", required=True, help="Output folder (created).")
@scheduler_option
@click.option("--steps", type=click.IntRange(min=1), help="Sampling steps [recipe: 50].")
@click.option("--guidance", type=float, help="Camera guidance scale [recipe: 2.0].")
@click.option("--seed", type=int, help="Noise seed [recipe: 0].")
@click.option("--resolution", type=click.IntRange(min=8), help="Square output size [recipe].")
@click.option("--video", is_flag=True, help="Also write the targets as a video.")
@click.option("--video-format", type=click.Choice(["mp4", "gif"]), default="mp4", show_default=True)
@device_option
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="auto = bf16 (or fp16) on GPU, fp32 on CPU.",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
def sample(
    checkpoint: Path,
    views: tuple[Path, ...],
    depths: tuple[Path, ...],
    reference_depth: str | None,
    vggt_weights: Path | None,
    cameras_file: Path,
    targets: Path | None,
    orbit: int | None,
    interpolate: int | None,
    out: Path,
    scheduler: str | None,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    resolution: int | None,
    video: bool,
    video_format: str,
    device: str | None,
    precision: str,
    overwrite: bool,
) -> None:
    """Render target views of reference images with a trained model.

    Writes target_NNN.png per target, contact_sheet.png (references, then targets),
    cameras.json (all cameras at the output size), sample.json, and with --video
    trajectory.mp4 or .gif. Inputs are checked before anything is written.
    """
    from rich.console import Console

    from cameo_cli.sample.job import SampleRequest, run_sample

    console = Console(stderr=True)
    request = SampleRequest(
        checkpoint=checkpoint,
        views=list(views),
        cameras=cameras_file,
        out=out,
        targets=targets,
        orbit=orbit,
        interpolate=interpolate,
        steps=steps,
        guidance=guidance,
        seed=seed,
        scheduler=scheduler,
        resolution=resolution,
        video=video_format if video else None,
        overwrite=overwrite,
        device=device,
        precision=precision,
        depths=list(depths) or None,
        reference_depth=reference_depth,
        vggt_weights=vggt_weights,
    )
    folder = run_sample(request, console)
    written = sorted(p.name for p in folder.iterdir())
    console.print(f"[green]wrote[/green] {folder}: {', '.join(written)}")
