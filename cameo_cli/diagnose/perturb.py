"""Identity-attention perturbation (as in PAG): sample with one layer's attention replaced by
output = V and measure how far the target views fall from the ground truth.

Every sample uses the same seed, so the initial noise and the DDIM path differ only through
the perturbed layer. The drop is the unperturbed model's score minus the perturbed one's.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from rich.progress import Progress

from cameo_cli.batch import ViewBatch
from cameo_cli.camera_files import CameraSet
from cameo_cli.errors import CameoError

if TYPE_CHECKING:
    from cameo_cli.diagnose.request import DiagnoseRequest, Diagnosis
    from cameo_cli.lpips import LPIPS


def _lpips(request: DiagnoseRequest) -> tuple[LPIPS | None, str | None]:
    """(LPIPS model or None, note saying why it is missing)."""
    from cameo_cli.lpips import LPIPS

    try:
        return LPIPS.load("vgg", backbone_path=request.lpips_weights), None
    except CameoError as error:
        return None, f"LPIPS not computed: {error}"


def perturbation_study(
    diagnosis: Diagnosis, layers: list[int], progress: Progress | None = None
) -> tuple[dict, dict]:
    """(JSON summary, images of the first view set for the side-by-side figure)."""
    model, dataset, request = diagnosis.model, diagnosis.dataset, diagnosis.request
    views = diagnosis.views
    from cameo_cli.image_metrics import psnr
    from cameo_cli.pipeline import MultiViewPipeline

    device = next(model.backbone.parameters()).device
    pipeline = MultiViewPipeline(
        model.backbone,
        model.codec,
        model.recipe.diffusion,
        dataset.num_views,
        scheduler=model.recipe.sample.scheduler,
        device=device,
        dtype=torch.float32,
        domain=model.recipe.data.domain,
    )
    steps = request.sample_steps or model.recipe.sample.steps
    guidance = model.recipe.sample.guidance
    lpips, note = _lpips(request)
    if lpips is not None:
        lpips = lpips.to(device)
    runs = [None, *layers]  # None: the unperturbed model
    scores = {run: {"psnr": [], "lpips": []} for run in runs}
    samples: dict = {}
    task = progress.add_task("perturbation", total=len(views) * len(runs)) if progress else None
    for number, (scene, frames, refs) in enumerate(views):
        batch = ViewBatch.from_item(dataset.get_views(scene, frames, refs))
        images = (batch.images[0] + 1) / 2
        K, w2c = batch.intrinsics[0], batch.world_to_camera[0]
        truth = images[refs:]
        for run in runs:
            perturbed = (
                model.backbone.perturb([run]) if run is not None else contextlib.nullcontext()
            )
            with perturbed:
                out = pipeline(
                    images[:refs],
                    CameraSet.from_pixel(K[:refs], w2c[:refs], tuple(images.shape[-2:])),
                    CameraSet.from_pixel(K[refs:], w2c[refs:], tuple(images.shape[-2:])),
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(request.seed),
                    output_type="pt",
                ).images
            scores[run]["psnr"].append(psnr(out, truth))
            if lpips is not None:
                with torch.no_grad():
                    scores[run]["lpips"].append(lpips(out.to(device), truth.to(device)).cpu())
            if number == 0:
                samples[run] = out
            if progress is not None:
                progress.advance(task)
        if number == 0:
            samples["truth"] = truth
            samples["references"] = images[:refs]

    def mean(values: list[torch.Tensor]) -> float | None:
        return float(torch.cat(values).mean()) if values else None

    baseline = {name: mean(scores[None][name]) for name in ("psnr", "lpips")}
    multiview = model.backbone.multiview_layers
    rows = []
    for layer in layers:
        row = {name: mean(scores[layer][name]) for name in ("psnr", "lpips")}
        rows.append(
            {
                "layer": layer,
                "multiview": layer in multiview,
                **row,
                "psnr_drop": baseline["psnr"] - row["psnr"],
                "lpips_increase": (
                    row["lpips"] - baseline["lpips"] if row["lpips"] is not None else None
                ),
            }
        )
    summary = {
        "sample_steps": steps,
        "guidance": guidance,
        "seed": request.seed,
        "baseline": baseline,
        "layers": rows,
    }
    if note:
        summary["lpips_note"] = note
    return summary, samples
