"""`cameo evaluate` as a library call: sample every scene of a fixed evaluation index and
score the target views against the ground truth.

Layout of the output folder (resumable: finished scenes are skipped)::

    config.json          the full metric configuration (checked on resume)
    scenes/<scene>.json  one file per finished scene: per-view and mean metrics (and
                         `vggt_fit` with --reference-depth vggt)
    results.json         configuration, per-scene and mean results, warnings (scored scenes
                         marked `train` in the dataset's index.json)
    results.csv          one row per scene and a final "mean" row, with the configuration
    images/<scene>/      with --save-images: reference_K.png, target_K.png (generated),
                         truth_K.png, references.json and targets.json (cameo camera
                         files at the evaluation size: ready for `cameo sample`)

Beside the model's metrics, every target view holds its `sharpness` (image_metrics) and the
same metrics of the reference lines, `<line>_<metric>` for `flat`, `copy` and (with depth)
`reproject`, and `reproject_seen` (`cameo_cli.reference_lines`). Means are over all evaluated
target views. Each scene's noise comes from its own generator
(seed + CRC32 of the scene name), so results do not depend on the order or on resuming.
"""

from __future__ import annotations

import math
import re
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cameo_cli import files
from cameo_cli.batch import ViewBatch
from cameo_cli.camera_files import CameraSet, to_cameo_json
from cameo_cli.data.records import TRAIN_SPLIT
from cameo_cli.errors import CameoError
from cameo_cli.evaluate import protocol
from cameo_cli.image_metrics import SSIM_CONFIG, psnr, sharpness, ssim
from cameo_cli.lpips import LPIPS, default_backbone_path
from cameo_cli.pipeline import MultiViewPipeline, reference_depth
from cameo_cli.reference_geometry import (
    MIN_REFERENCES,
    ONE_REFERENCE,
    REFERENCE_DEPTHS,
    ReferenceVGGT,
    check_vggt_option,
)
from cameo_cli.reference_lines import DEPTH_TOLERANCE, LINES, reference_lines

METRICS = ("psnr", "ssim", "lpips")
LPIPS_NETS = ("vgg", "alex")


@dataclass
class EvaluateRequest:
    """What `cameo evaluate` was asked to do (None = the checkpoint recipe's value)."""

    checkpoint: Path
    dataset: Path
    out: Path
    index: Path | None = None
    metrics: list[str] | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    lpips_net: str | None = None
    lpips_weights: Path | None = None
    limit: int | None = None
    save_images: bool = False
    overwrite: bool = False
    device: str | None = None
    index_frames: str | None = None  # protocol.INDEX_FRAMES; None: refuse when ambiguous
    exclude_context_targets: bool = False
    score_size: str = "recipe"  # protocol.SCORE_SIZES
    reference_depth: str = "dataset"  # reference_geometry.REFERENCE_DEPTHS
    vggt_weights: Path | None = None  # with reference_depth "vggt"


def parse_metrics(text: str | list[str]) -> list[str]:
    names = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise CameoError(
            f"unknown metrics {', '.join(unknown) or '(none given)'}: choose from "
            f"{', '.join(METRICS)}"
        )
    return list(dict.fromkeys(names))


def scene_seed(seed: int, scene: str) -> int:
    return (seed + zlib.crc32(scene.encode())) % 2**63


def _file_name(scene: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", scene)


def _prepare_output(out: Path, config: dict, overwrite: bool) -> None:
    """Create `out`, or resume it when its configuration is the same."""
    config_file = out / "config.json"
    if out.exists() and not out.is_dir():
        raise CameoError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not config_file.is_file():
            raise CameoError(f"{out}: folder is not empty and holds no evaluation to resume")
        elif files.read_json(config_file) != config:
            raise CameoError(
                f"{out}: holds an evaluation with another configuration "
                "(other checkpoint, metrics, scheduler, steps, guidance or seed); pass --overwrite "
                "to start again, or choose another --out"
            )
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    files.write_json(config_file, config)


def run_evaluation(request: EvaluateRequest, console: Console | None = None) -> dict:
    """Evaluate; returns the content of results.json."""
    from cameo_cli.data.dataset import MultiViewDataset

    console = console or Console(stderr=True)
    index_path = request.index or request.dataset / "eval_index.json"
    index = protocol.read_index(index_path, request.index_frames if request.index else None)
    if not index:
        raise CameoError(
            f"{index_path}: expected a non-empty {{scene: {{context, target}}}} object"
        )
    if request.limit is not None:
        index = dict(list(index.items())[: request.limit])
    _check_reference_depth(request, index, index_path)
    pipeline = MultiViewPipeline.from_pretrained(
        request.checkpoint, scheduler=request.scheduler, device=request.device
    )
    recipe = pipeline.recipe
    metrics = parse_metrics(request.metrics or recipe.evaluate.metrics)
    lpips_net = request.lpips_net or recipe.evaluate.lpips_net
    if lpips_net not in LPIPS_NETS:
        raise CameoError(f"--lpips-net must be one of {', '.join(LPIPS_NETS)}, got {lpips_net!r}")
    resolution = recipe.data.resolution
    dataset = MultiViewDataset(
        request.dataset, num_views=2, min_refs=1, max_refs=1, resolution=resolution
    )
    index, context_targets = _protocol_index(index, index_path, dataset, request)
    _check_index(index, index_path, dataset, pipeline.num_views)
    warnings = trained_scenes_warnings(index, dataset)
    for warning in warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    lpips = None
    if "lpips" in metrics:
        lpips = LPIPS.load(lpips_net, backbone_path=request.lpips_weights).to(pipeline.device)

    steps = request.steps or recipe.sample.steps
    guidance = recipe.sample.guidance if request.guidance is None else request.guidance
    seed = recipe.sample.seed if request.seed is None else request.seed
    masked = dataset.has_masks
    config = {
        "checkpoint": str(Path(request.checkpoint).resolve()),
        "step": pipeline.step,
        "dataset": str(Path(request.dataset).resolve()),
        "index": str(Path(index_path).resolve()),
        "scenes": list(index),
        "resolution": resolution,
        "metrics": metrics,
        "masked_metrics": masked,
        "psnr": {"data_range": 1.0, "identical_images": recipe.evaluate.psnr_cap},
        "ssim": SSIM_CONFIG,
        "lpips": (
            {
                "net": lpips_net,
                "backbone_weights": str(request.lpips_weights or default_backbone_path(lpips_net)),
                "heads": "torchmetrics lpips_models",
            }
            if lpips is not None
            else None
        ),
        "scheduler": request.scheduler or recipe.sample.scheduler,
        "steps": steps,
        "guidance": guidance,
        "eta": recipe.sample.eta,
        "seed": seed,
        "priors": priors_label(dataset, pipeline, request.reference_depth),
        "noise": "per scene: seed + CRC32(scene name)",
        "averaging": "mean over all target views",
        "index_frames": request.index_frames if request.index else "prepared",
        "context_targets": context_targets,
        "score_size": request.score_size,
    }
    config["reference_lines"] = _lines_config(dataset.has_geometry)
    _prepare_output(request.out, config, request.overwrite)
    if context_targets["targets"]:
        console.print(
            f"{context_targets['targets']} target(s) in {context_targets['scenes']} scene(s) "
            "equal a context frame (the model is handed them as references): "
            + ("excluded" if context_targets["excluded"] else "kept (--exclude-context-targets)")
        )

    vggt = None
    if request.reference_depth == "vggt" and pipeline.backbone.uses_priors:
        vggt = ReferenceVGGT(request.vggt_weights, device=pipeline.device)
    todo = [s for s in index if not (request.out / "scenes" / f"{_file_name(s)}.json").is_file()]
    if len(todo) < len(index):
        console.print(f"resuming: {len(index) - len(todo)} of {len(index)} scenes already done")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("evaluating", total=len(todo))
        for scene in todo:
            progress.update(task, description=f"evaluating {scene}")
            result = _evaluate_scene(
                scene,
                index[scene],
                dataset,
                pipeline,
                lpips,
                metrics,
                masked,
                config,
                recipe.evaluate.psnr_cap,
                request,
                vggt,
            )
            files.write_json(request.out / "scenes" / f"{_file_name(scene)}.json", result)
            progress.advance(task)

    results = _collect(request.out, index, config)
    results["warnings"] = warnings
    _write_csv(request.out / "results.csv", results, config)
    files.write_json(request.out / "results.json", results)
    console.print(_table(results))
    console.print(_lines_table(results))
    return results


def trained_scenes_warnings(index: dict, dataset) -> list[str]:
    """A warning (for the console and results.json) when scenes of `index` are marked
    `train` in the dataset's index.json: scores on them are not held-out scores."""
    scenes = dataset.index["scenes"]
    trained = [scene for scene in index if scenes[scene].get("split") == TRAIN_SPLIT]
    if not trained:
        return []
    return [
        f"{dataset.root}: {len(trained)} of the {len(index)} evaluated scenes are marked "
        f"'{TRAIN_SPLIT}' in index.json (e.g. {trained[0]}): a model trained on them scores "
        "them as seen scenes, not held-out ones"
    ]


def _protocol_index(
    index: dict, path: Path, dataset, request: EvaluateRequest
) -> tuple[dict, dict]:
    """The index in prepared positions, its targets equal to a context frame counted (and
    with --exclude-context-targets removed): (index, {"scenes", "targets", "excluded"})."""
    if request.score_size not in protocol.SCORE_SIZES:
        raise CameoError(f"--score-size must be recipe or pixelsplat, got {request.score_size!r}")
    frames = request.index_frames if request.index else "prepared"
    index = protocol.index_in_positions(index, frames, dataset.index["scenes"], path)
    found = protocol.context_targets(index)
    counts = {
        "scenes": len(found),
        "targets": sum(len(t) for t in found.values()),
        "excluded": request.exclude_context_targets,
    }
    if request.exclude_context_targets:
        index = protocol.without_context_targets(index)
        if not index:
            raise CameoError(f"{path}: no target is left once those equal to a context frame go")
    return index, counts


def _check_reference_depth(request: EvaluateRequest, index: dict, path: Path) -> None:
    """Refuse a bad --reference-depth / --vggt-weights combination before anything is written."""
    if request.reference_depth not in REFERENCE_DEPTHS:
        raise CameoError(
            f"--reference-depth must be one of {', '.join(REFERENCE_DEPTHS)}, "
            f"got {request.reference_depth!r}"
        )
    check_vggt_option(request.reference_depth, request.vggt_weights)
    single = [scene for scene, entry in index.items() if len(entry["context"]) < MIN_REFERENCES]
    if request.reference_depth == "vggt" and single:
        raise CameoError(f"{path}: scene {single[0]!r} has one context view: {ONE_REFERENCE}")


def priors_label(
    dataset, pipeline: MultiViewPipeline, reference_depth: str = "dataset"
) -> str | None:
    """What a backbone with geometric priors got them from (None: it uses none), for
    `--reference-depth` dataset, vggt or none."""
    if not pipeline.backbone.uses_priors:
        return None
    if reference_depth == "none":
        return "none: --reference-depth none (zero priors)"
    if reference_depth == "vggt":
        return "VGGT on the references only (scale fitted to the reference cameras' baseline)"
    if not dataset.has_geometry:
        return "none: the dataset has no depth (zero priors)"
    if dataset.index.get("source", {}).get("dataset") == "synthetic":
        return "dataset depth (exact on synthetic)"
    if any("vggt_fit" in meta for meta in dataset.index["scenes"].values()):
        return "dataset depth (VGGT over windows that include the target frames)"
    return "dataset depth"


def _check_index(index: dict, path: Path, dataset, num_views: int) -> None:
    scenes = dataset.index["scenes"]
    for scene, entry in index.items():
        if scene not in scenes:
            raise CameoError(f"{path}: scene {scene!r} is not in the dataset {dataset.root}")
        frames = scenes[scene]["num_frames"]
        bad = [f for f in entry["context"] + entry["target"] if not 0 <= f < frames]
        if bad:
            raise CameoError(f"{path}: scene {scene!r}: frames {bad} outside 0..{frames - 1}")
        if len(entry["context"]) >= num_views:
            raise CameoError(
                f"{path}: scene {scene!r} has {len(entry['context'])} context views; this "
                f"model sees {num_views} views at a time (at most {num_views - 1} references)"
            )


def _evaluate_scene(
    scene: str,
    entry: dict,
    dataset,
    pipeline: MultiViewPipeline,
    lpips: LPIPS | None,
    metrics: list[str],
    masked: bool,
    config: dict,
    psnr_cap: float,
    request: EvaluateRequest,
    vggt: ReferenceVGGT | None,
) -> dict:
    started = time.perf_counter()
    context, target = entry["context"], entry["target"]
    views = ViewBatch.from_item(dataset.get_views(scene, context + target, len(context)))
    images = (views.images[0] + 1) / 2
    K, w2c = views.intrinsics[0], views.world_to_camera[0]
    refs = len(context)
    size = tuple(images.shape[-2:])
    depths, fit = None, None
    if vggt is not None:
        try:
            estimated = vggt(images[:refs], w2c[:refs])
        except CameoError as error:
            raise CameoError(f"{dataset.root}: scene {scene!r}: {error}") from None
        depths, fit = estimated.depth, estimated.fit()
    elif request.reference_depth == "dataset":
        depths = reference_depth(views, 0)
    generated = pipeline(
        images[:refs],
        CameraSet.from_pixel(K[:refs], w2c[:refs], size),
        CameraSet.from_pixel(K[refs:], w2c[refs:], size),
        num_inference_steps=config["steps"],
        guidance_scale=config["guidance"],
        eta=config["eta"],
        generator=torch.Generator().manual_seed(scene_seed(config["seed"], scene)),
        output_type="pt",
        depths=depths,
    ).images
    truth = images[refs:]
    mask = views.object_mask[0][refs:] if masked else None
    scored, stored = generated, None  # what is scored; saved images stay at the sampling size
    if config["score_size"] == "pixelsplat":
        stored = [dataset.reader.image(scene, f) for f in target]
        masks = [dataset.reader.mask(scene, f) for f in target] if masked else None
        scored, truth, mask = protocol.pixelsplat_views(generated, stored, masks)
    per_view: dict[str, list[float]] = {}
    for name in metrics:
        per_view[name] = _score(name, scored, truth, None, lpips, psnr_cap)
        if mask is not None:
            per_view[f"{name}_masked"] = _score(name, scored, truth, mask, lpips, psnr_cap)
    per_view.update(
        _line_scores(views, scored, truth, mask, metrics, lpips, psnr_cap, stored is not None)
    )
    if request.save_images:
        _save_scene_images(request.out / "images" / _file_name(scene), views, generated, refs)
    return {
        "scene": scene,
        "context": context,
        "target": target,
        "per_view": per_view,
        "mean": {name: sum(values) / len(values) for name, values in per_view.items()},
        **({"vggt_fit": fit} if fit is not None else {}),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _lines_config(has_geometry: bool) -> dict:
    """What the reference-line and sharpness columns mean (`cameo_cli.reference_lines`)."""
    return {
        "lines": list(LINES if has_geometry else LINES[:2]),
        "flat": "every pixel the references' mean colour",
        "copy": "the reference whose camera centre is nearest, as is",
        "reproject": "each pixel from the nearest reference that sees it (exact depth, "
        f"z-depth agreement within {DEPTH_TOLERANCE:.0%}), the mean colour elsewhere; "
        "reproject_seen: the share of pixels seen",
        "sharpness": "Laplacian energy of the generated view over the truth's (1 = as sharp)",
    }


def _line_scores(
    views: ViewBatch,
    generated: torch.Tensor,
    truth: torch.Tensor,
    mask: torch.Tensor | None,
    metrics: list[str],
    lpips: LPIPS | None,
    psnr_cap: float,
    pixelsplat: bool,
) -> dict[str, list[float]]:
    """Per target view: the model's `sharpness`, `<line>_<metric>` of every reference line
    (and `_masked`), and `reproject_seen`; with `pixelsplat` (`--score-size pixelsplat`) the
    lines are resized as the model's views are."""
    point_map = None if views.point_map is None else views.point_map[0]
    point_valid = None if views.point_valid is None else views.point_valid[0]
    lines = reference_lines(
        (views.images[0] + 1) / 2,
        views.intrinsics[0],
        views.world_to_camera[0],
        views.ref_mask[0],
        point_map,
        point_valid,
    )
    scores = {"sharpness": [float(v) for v in sharpness(generated, truth)]}
    for line, images in lines.images().items():
        if pixelsplat:  # scored as the model's views are (--score-size pixelsplat)
            images = protocol.pixelsplat_sample(images)
        for name in metrics:
            scores[f"{line}_{name}"] = _score(name, images, truth, None, lpips, psnr_cap)
            if mask is not None:
                scores[f"{line}_{name}_masked"] = _score(name, images, truth, mask, lpips, psnr_cap)
    if lines.seen is not None:
        scores["reproject_seen"] = [float(v) for v in lines.seen]
    return scores


def _save_scene_images(folder: Path, views: ViewBatch, generated: torch.Tensor, refs: int) -> None:
    """reference_K.png, target_K.png (generated), truth_K.png, and the cameras at the
    evaluation size: references.json (named after the PNGs) and targets.json."""
    folder.mkdir(parents=True, exist_ok=True)
    images = (views.images[0] + 1) / 2
    for k in range(refs):
        files.save_png(images[k], folder / f"reference_{k}.png")
    for k, image in enumerate(generated):
        files.save_png(image, folder / f"target_{k}.png")
        files.save_png(images[refs + k], folder / f"truth_{k}.png")
    size = tuple(images.shape[-2:])
    K, w2c = views.intrinsics[0].double(), views.world_to_camera[0].double()
    references = CameraSet.from_pixel(
        K[:refs], w2c[:refs], size, names=[f"reference_{k}.png" for k in range(refs)]
    )
    targets = CameraSet.from_pixel(
        K[refs:], w2c[refs:], size, names=[f"target_{k}.png" for k in range(len(generated))]
    )
    files.write_json(folder / "references.json", to_cameo_json(references, image_size=size))
    files.write_json(folder / "targets.json", to_cameo_json(targets, image_size=size))


def _score(
    name: str,
    generated: torch.Tensor,
    truth: torch.Tensor,
    mask: torch.Tensor | None,
    lpips: LPIPS | None,
    psnr_cap: float,
) -> list[float]:
    if name == "psnr":
        values = psnr(generated, truth, mask=mask, cap=psnr_cap)
    elif name == "ssim":
        values = ssim(generated, truth, mask=mask)
    else:
        device = lpips.shift.device
        pair = (generated.to(device), truth.to(device))
        values = lpips(*pair) if mask is None else lpips.masked(*pair, mask.to(device))
    return [float(v) for v in values]


def _collect(out: Path, index: dict, config: dict) -> dict:
    per_scene = [files.read_json(out / "scenes" / f"{_file_name(scene)}.json") for scene in index]
    names = list(per_scene[0]["per_view"]) if per_scene else []
    mean = {}
    for name in names:
        values = [v for scene in per_scene for v in scene["per_view"][name]]
        mean[name] = sum(values) / len(values)
    views = sum(len(scene["target"]) for scene in per_scene)
    return {"config": config, "per_scene": per_scene, "mean": mean, "views": views}


def _csv_config(config: dict) -> dict[str, object]:
    return {
        "resolution": config["resolution"],
        "score_size": config["score_size"],
        "scheduler": config["scheduler"],
        "steps": config["steps"],
        "guidance": config["guidance"],
        "seed": config["seed"],
        "lpips_net": config["lpips"]["net"] if config["lpips"] else "",
        "ssim_window": config["ssim"]["window"],
        "ssim_sigma": config["ssim"]["sigma"],
        "psnr_identical": config["psnr"]["identical_images"],
        "step": config["step"],
    }


def _write_csv(path: Path, results: dict, config: dict) -> None:
    names = list(results["mean"])
    settings = _csv_config(config)
    rows = [["scene", "views", *names, *settings]]
    for scene in results["per_scene"]:
        values = [_format(scene["mean"][name]) for name in names]
        rows.append([scene["scene"], len(scene["target"]), *values, *settings.values()])
    means = [_format(results["mean"][name]) for name in names]
    rows.append(["mean", results["views"], *means, *settings.values()])
    files.write_csv(path, rows)


def _format(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.6f}"


def _is_line(name: str) -> bool:
    """A reference line's column (`flat_psnr`, `reproject_seen`, ...)."""
    return name.split("_")[0] in LINES


def _table(results: dict) -> Table:
    names = [name for name in results["mean"] if not _is_line(name)]
    table = Table(title=f"evaluation ({results['views']} target views)")
    table.add_column("scene")
    for name in names:
        table.add_column(name, justify="right")
    for scene in results["per_scene"]:
        table.add_row(scene["scene"], *(f"{scene['mean'][n]:.4f}" for n in names))
    table.add_row("[bold]mean[/bold]", *(f"[bold]{results['mean'][n]:.4f}[/bold]" for n in names))
    return table


def _lines_table(results: dict) -> Table:
    """The model's mean metrics beside those of the reference lines."""
    mean = results["mean"]
    names = [name for name in mean if not _is_line(name) and name != "sharpness"]
    lines = [line for line in LINES if f"{line}_{names[0]}" in mean]
    table = Table(title=f"beside the reference lines ({results['views']} target views)")
    table.add_column("predictor")
    for name in names:
        table.add_column(name, justify="right")
    table.add_row("model", *(f"{mean[name]:.4f}" for name in names))
    for line in lines:
        table.add_row(line, *(f"{mean[f'{line}_{name}']:.4f}" for name in names))
    if "reproject_seen" in mean:
        table.caption = f"reproject: {mean['reproject_seen']:.0%} of the pixels seen"
    return table
