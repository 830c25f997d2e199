"""Where a model's novel views fall short: its one-step x̂0 at each noise level, beside the
reference lines and its sampled views, on held-out samples.

The one-step estimate x̂0 at timestep t (targets noised with fixed noise, references clean)
is the model's posterior mean: at small t it shows whether the denoiser cleans up what little
noise is left (PSNR above the noisy input's, sharpness near or below 1); at t near 1000 the
targets are almost pure noise, so x̂0 is what the model infers from the references alone,
to compare with `copy` and `reproject`. Samples scatter around that mean, so a model that is
unsure of the target draws views below it, with texture that is not the scene's.

    python benchmarks/denoiser_by_timestep.py --checkpoint RUN --dataset data/synthetic
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cameo_cli.batch import ViewBatch
from cameo_cli.diffusion import make_train_scheduler
from cameo_cli.pipeline import MultiViewPipeline
from cameo_cli.train.setup import open_dataset
from cameo_cli.train.validation import (
    one_step_views,
    reference_line_psnr,
    sampled_views,
    target_psnr,
    target_sharpness,
)

TIMESTEPS = (20, 50, 100, 250, 500, 750, 950)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="run, checkpoint, export")
    parser.add_argument("--dataset", type=Path, required=True, help="prepared, with a test split")
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    pipeline = MultiViewPipeline.from_pretrained(args.checkpoint, device="cpu")
    recipe = pipeline.recipe
    held_out = open_dataset(recipe, needs_geometry=False, split="test", root=str(args.dataset))
    count = min(args.samples, len(held_out))
    batch = ViewBatch.collate([held_out[i] for i in range(count)]).with_domain(recipe.data.domain)
    scheduler = make_train_scheduler(recipe.diffusion)
    backbone = pipeline.backbone.eval()
    table = Table(title=f"{args.checkpoint} (step {pipeline.step}), {count} held-out samples")
    for column in ("predictor", "PSNR (dB)", "sharpness"):
        table.add_column(column)
    for timestep in TIMESTEPS:
        views = one_step_views(
            backbone, pipeline.codec, scheduler, batch, seed=0, timestep=timestep
        )
        psnr, sharp = target_psnr(views, batch), target_sharpness(views, batch)
        table.add_row(f"one-step x̂0, t = {timestep}", f"{psnr:.2f}", f"{sharp:.2f}")
    sample = recipe.sample
    views = sampled_views(pipeline, batch, steps=sample.steps, guidance=sample.guidance, seed=0)
    table.add_row(
        f"sampled (DDIM {sample.steps}, guidance {sample.guidance})",
        f"{target_psnr(views, batch):.2f}",
        f"{target_sharpness(views, batch):.2f}",
    )
    for name, value in reference_line_psnr(batch).items():
        if name.endswith("_psnr"):
            table.add_row(f"line: {name.removeprefix('val/line_')[:-5]}", f"{value:.2f}", "")
    Console().print(table)


if __name__ == "__main__":
    main()
