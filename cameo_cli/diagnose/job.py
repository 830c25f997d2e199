"""`cameo diagnose`: which layers carry correspondence, how it depends on the viewpoint
change and on training, and what happens to samples when a layer's attention is removed.

One forward pass per timestep probes every chosen layer at once (references clean, targets
noised to the timestep with a fixed seed); each layer is scored with `precision`. With
`--run`, every checkpoint of the run is scored the same way; with `--perturb`, samples are
drawn with each layer's attention replaced by the identity (fixed seed and noise).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cameo_cli.attention.hooks import head_averaged_argmax, predicted_matches
from cameo_cli.backbone import MultiViewBackbone
from cameo_cli.batch import ViewBatch
from cameo_cli.diagnose.request import DiagnosedModel, DiagnoseRequest, Diagnosis, ViewSet
from cameo_cli.errors import CameoError
from cameo_cli.layer_selection import LayerSelection
from cameo_cli.match_precision import (
    ROTATION_BINS,
    PrecisionCounts,
    Radii,
    chance_counts,
    headline_metric,
    lift,
    metric_label,
    precision_scorer,
)
from cameo_cli.probed import encode_views, probed_forward

if TYPE_CHECKING:
    from cameo_cli.attention.hooks import MatchScorer, ProbeResult
    from cameo_cli.config import Recipe
    from cameo_cli.data.dataset import MultiViewDataset

DEFAULT_RECIPE = "quickstart-cpu"
PROTOCOLS = ("views", "probe3d")
PROBE3D_MAX_ANGLE = 120.0  # degrees: partners within (0, 120] of the query image
PROBE3D_SEED = 8  # probe3d's torch.manual_seed(8)
PROBE3D_EVERY = 4  # probe3d keeps instances[::4]
RECOMMEND_METRIC = "pixels"  # layers are recommended by their lift within the pixel radius


# -- inputs ------------------------------------------------------------------------------------


def parse_layers(text: str, backbone: MultiViewBackbone) -> list[int]:
    """`--layers` in the one layer syntax (`cameo_cli.layer_selection`; default "all"), as the
    backbone's layer numbers."""
    from cameo_cli.layers import read_recommended_layers

    try:
        selection = LayerSelection.parse(text)
    except ValueError as error:
        raise CameoError(f"--layers: {error}") from None
    return selection.resolve(
        backbone.name,
        len(backbone.hooks),
        backbone.default_layer,
        lambda count: read_recommended_layers(backbone.name, backbone.variant, count),
    )


def default_recipe(backbone: str, variant: str) -> str:
    """The recipe a model without checkpoint is diagnosed with: the CPU quick start for the
    tiny configs, the backbone's paper recipe (`<backbone>-re10k`) for the full ones."""
    from cameo_cli.config import list_recipes

    if variant == "tiny":
        return DEFAULT_RECIPE
    name = f"{backbone}-re10k"
    if name not in {recipe for recipe, _ in list_recipes()}:
        raise CameoError(
            f"no shipped recipe '{name}' for a {variant} '{backbone}': pass --recipe with the "
            "codec, views and resolution to diagnose it at"
        )
    return name


def load_model(
    request: DiagnoseRequest, checkpoint: Path | None, device: torch.device
) -> DiagnosedModel:
    """The backbone of `checkpoint`, or a fresh/pretrained one of `request.backbone`."""
    from cameo_cli.codec import load_codec
    from cameo_cli.config import load_recipe

    if checkpoint is not None:
        from cameo_cli.run_folder.checkpoints import load_for_inference

        loaded = load_for_inference(checkpoint, device=device)
        name = loaded.backbone.name
        if name != request.backbone:
            raise CameoError(
                f"{checkpoint}: the checkpoint holds a '{name}' backbone, not "
                f"'{request.backbone}' (pass --backbone {name})"
            )
        recipe = loaded.recipe
        # the method's own matches at its (first) layer (CAMEO: its trained head), if any
        layers = LayerSelection.parse(recipe.alignment.layer).numbers
        layer = layers[0] if layers else None
        scorer = None
        if loaded.alignment is not None and layer is not None:
            scorer = loaded.alignment.match_scorer(layer)
        return DiagnosedModel(
            backbone=loaded.backbone,
            codec=load_codec(recipe.codec).to(device).eval(),
            recipe=recipe,
            variant=recipe.backbone.variant,
            match_scorer=scorer,
            supervised_layer=layer if scorer is not None else None,
            step=loaded.step,
            source=str(checkpoint),
        )
    from cameo_cli.registry import backbone_from_recipe

    recipe = load_recipe(request.recipe or default_recipe(request.backbone, request.variant))
    codec = load_codec(recipe.codec).to(device).eval()
    torch.manual_seed(request.seed)
    same = recipe.backbone.name == request.backbone  # else the recipe's options are another's
    config = dataclasses.replace(
        recipe.backbone,
        name=request.backbone,
        variant=request.variant,
        pretrained=str(request.pretrained) if request.pretrained else None,
        options=recipe.backbone.options if same else {},
    )
    backbone = backbone_from_recipe(config, in_channels=codec.channels)
    source = f"pretrained {request.pretrained}" if request.pretrained else "fresh (random init)"
    return DiagnosedModel(backbone.to(device).eval(), codec, recipe, request.variant, source=source)


def open_diagnose_dataset(root: Path, recipe: Recipe) -> MultiViewDataset:
    """The prepared dataset at the recipe's views and resolution; it must hold geometry."""
    from cameo_cli.data.dataset import MultiViewDataset

    if not (root / "index.json").is_file():
        raise CameoError(
            f"{root}: not a prepared dataset (no index.json); prepare it with "
            "`cameo prepare synthetic|re10k|dtu --out DIR`"
        )
    data = recipe.data
    dataset = MultiViewDataset(
        root, num_views=data.num_views, min_refs=1, max_refs=1, resolution=data.resolution
    )
    if not dataset.has_geometry:
        raise CameoError(
            f"{root}: the dataset has no geometry (point maps), which diagnose needs for its "
            "ground truth: prepare it again with `cameo prepare ... --geometry depth` "
            "(or `--geometry vggt --vggt-weights DIR` for datasets without depth)"
        )
    return dataset


def evaluation_views(dataset: MultiViewDataset, count: int) -> list[ViewSet]:
    """(scene, frames, number of references) for `count` scenes, those of `eval_index.json`
    first (on the synthetic set: its held-out scenes): their context and target frames, else
    evenly spaced frames."""
    from cameo_cli.data.dataset import load_eval_index

    views = dataset.num_views
    index = (
        load_eval_index(dataset.root) if (Path(dataset.root) / "eval_index.json").is_file() else {}
    )
    chosen = []
    scenes = [s for s in index if s in dataset.scenes]
    scenes += [s for s in dataset.scenes if s not in index]
    for scene in scenes[:count]:
        entry = index.get(scene)
        if entry is not None:
            refs = list(entry["context"])[: views - 1]
            frames = refs + [f for f in entry["target"] if f not in refs][: views - len(refs)]
        else:
            refs, frames = [], []
        if len(frames) < views:
            total = dataset.index["scenes"][scene]["num_frames"]
            spaced = torch.linspace(0, total - 1, views).round().long().tolist()
            refs = refs or spaced[:1]
            frames = frames + [f for f in spaced if f not in frames][: views - len(frames)]
        chosen.append((scene, frames, max(1, len(refs))))
    return chosen


def probe3d_pairs(dataset: MultiViewDataset, count: int) -> list[ViewSet]:
    """probe3d's NAVI pairs over the first `count` scenes: for every image a partner drawn
    uniformly (one generator seeded 8) among the scene's images at a relative rotation in
    (0, 120] degrees, then every 4th of these (query, partner) pairs; the query is the
    reference view."""
    from cameo_cli.cameras import relative_rotation_angle

    generator = torch.Generator().manual_seed(PROBE3D_SEED)
    instances = []
    for scene in dataset.scenes[:count]:
        w2c = torch.from_numpy(dataset.reader.cameras(scene)[1])
        angles = relative_rotation_angle(w2c[:, None], w2c[None, :])
        for query in range(len(w2c)):
            partners = torch.nonzero(
                (angles[query] > 0) & (angles[query] <= PROBE3D_MAX_ANGLE)
            ).flatten()
            if len(partners):
                pick = partners[torch.randint(len(partners), (1,), generator=generator)]
                instances.append((scene, [query, int(pick)], 1))
    if not instances:
        raise CameoError(
            f"{dataset.root}: no image pair within {PROBE3D_MAX_ANGLE:g} degrees "
            "in the scored scenes (--protocol probe3d)"
        )
    return instances[::PROBE3D_EVERY]


def scored_pairs(protocol: str, views: int) -> torch.Tensor:
    """[F, F] (query view, key view) pairs scored: every ordered pair of distinct views, or
    under probe3d the query image (view 0) into its partner (view 1) only."""
    if protocol == "probe3d":
        pairs = torch.zeros(views, views, dtype=torch.bool)
        pairs[0, 1] = True
        return pairs
    return ~torch.eye(views, dtype=torch.bool)


def collate(dataset: MultiViewDataset, views: list[ViewSet]) -> ViewBatch:
    """Items of `views` stacked into one batch (all with the same number of references)."""
    return ViewBatch.collate(
        [dataset.get_views(scene, frames, refs) for scene, frames, refs in views]
    )


# -- precision ---------------------------------------------------------------------------------


def probe_all(
    model: DiagnosedModel, batch: ViewBatch, layers: list[int], timestep: int, seed: int
) -> dict[int, ProbeResult]:
    """One forward pass at `timestep` with every layer in `layers` probed: {layer: ProbeResult}."""
    from cameo_cli.diffusion import make_train_scheduler, noised_views

    backbone, device = model.backbone, next(model.backbone.parameters()).device
    batch = batch.to(device).with_domain(model.recipe.data.domain)
    latents = encode_views(model.codec, batch).float()
    generator = torch.Generator().manual_seed(seed * 1000 + timestep)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    scheduler = make_train_scheduler(model.recipe.diffusion)
    steps = torch.full((batch.batch_size,), timestep, dtype=torch.long, device=device)
    noised = noised_views(scheduler, latents, noise, steps, batch.ref_mask)
    grids = {layer: backbone.token_grid(layer, batch.image_size) for layer in layers}
    return probed_forward(backbone, batch, noised, probes=grids).probes


def score_probe(
    probe: ProbeResult,
    batch: ViewBatch,
    radii: Radii,
    epsilon: float,
    scorer: MatchScorer | None = None,
    metres_per_unit: torch.Tensor | None = None,
    pairs: torch.Tensor | None = None,
) -> tuple[PrecisionCounts, PrecisionCounts, PrecisionCounts | None]:
    """Counts of the head-averaged attention, of chance (its predictions with shuffled keys,
    `chance_counts`) and of the method's `scorer` if given (a trained head's map); 3D radii
    in cm with `metres_per_unit` [B] (metric data), else in token footprints; only the
    (query view, key view) `pairs` [F, F] when given."""
    score = precision_scorer(
        probe, batch, radii, epsilon, metres_per_unit=metres_per_unit, pairs=pairs
    )
    predicted = predicted_matches(probe, head_averaged_argmax)
    projected = None if scorer is None else score(predicted_matches(probe, scorer))
    return score(predicted), chance_counts(score, predicted), projected


def layer_precision(
    diagnosis: Diagnosis, layers: list[int], progress: Progress | None = None
) -> list[dict]:
    """Per-layer precision summaries over all timesteps (and per timestep)."""
    model, dataset, request = diagnosis.model, diagnosis.dataset, diagnosis.request
    units = world_units(dataset, diagnosis.views)
    metrics = request.radii.metrics(units is not None)
    per_layer = {layer: PrecisionCounts(metrics) for layer in layers}
    per_step = {(layer, t): PrecisionCounts(metrics) for layer in layers for t in request.timesteps}
    chance = {layer: PrecisionCounts(metrics) for layer in layers}
    projected = PrecisionCounts(metrics) if model.match_scorer is not None else None
    batches = _batches(diagnosis.views)
    task = (
        progress.add_task("precision", total=len(batches) * len(request.timesteps))
        if progress
        else None
    )
    with torch.no_grad():
        for group in batches:
            batch = collate(dataset, group)
            scale = torch.tensor([units[s] for s in batch.scenes]) if units else None
            pairs = scored_pairs(request.protocol, batch.num_views)
            for timestep in request.timesteps:
                results = probe_all(model, batch, layers, timestep, request.seed)
                for layer, probe in results.items():
                    head = model.match_scorer if layer == model.supervised_layer else None
                    counts, chance_part, head_counts = score_probe(
                        probe, batch, request.radii, request.epsilon, head, scale, pairs
                    )
                    per_layer[layer].add(counts)
                    chance[layer].add(chance_part)
                    per_step[(layer, timestep)].add(counts)
                    if head_counts is not None:
                        projected.add(head_counts)
                if progress is not None:
                    progress.advance(task)
    resolution = batch.image_size[1]
    infos = {info.index: info for info in model.backbone.layers(resolution)}
    summaries = []
    for layer in layers:
        info = infos[layer]
        attention = per_layer[layer].summary()
        at_chance = chance[layer].summary()["precision"]
        summary = {
            "layer": layer,
            "path": info.path,
            "multiview": info.multiview,
            "grid": list(info.grid),
            "heads": info.heads,
            "stride_px": resolution / info.grid[1],
            "attention": dict(attention, lift=lift(attention["precision"], at_chance)),
            "chance": at_chance,
            "by_timestep": {
                str(t): per_step[(layer, t)].summary()["precision"] for t in request.timesteps
            },
        }
        if layer == model.supervised_layer and projected is not None:
            head = projected.summary()
            summary["projection_head"] = dict(head, lift=lift(head["precision"], at_chance))
        summaries.append(summary)
    return summaries


def world_units(dataset: MultiViewDataset, views: list[ViewSet]) -> dict[str, float] | None:
    """Metres per world unit of each scored scene (index.json `metres_per_unit`), or None
    unless every one of them is metric."""
    scenes = dataset.index["scenes"]
    units = {scene: scenes[scene].get("metres_per_unit") for scene, _, _ in views}
    return units if all(units.values()) else None


def _batches(views: list[ViewSet]) -> list[list[ViewSet]]:
    """Group view sets with the same number of references (one forward pass each)."""
    groups: dict[int, list] = {}
    for view in views:
        groups.setdefault(view[2], []).append(view)
    return list(groups.values())


def recommend(summaries: list[dict], metric: str = RECOMMEND_METRIC, top_k: int = 1) -> dict | None:
    """The multi-view layer whose attention is most precise above chance (the highest lift
    in `metric`, `precision.lift`), ties to the earlier one, and under "top" the `top_k`
    best ones, best first (fewer if fewer were scored); each with precision, chance, lift."""
    scored = [
        {
            "layer": s["layer"],
            "path": s["path"],
            "precision": s["attention"]["precision"][metric],
            "chance": s["chance"][metric],
            "lift": s["attention"]["lift"][metric],
        }
        for s in summaries
        if s["multiview"] and s["attention"]["lift"][metric] is not None
    ]
    if not scored:
        return None
    top = sorted(scored, key=lambda row: -row["lift"])[:top_k]  # stable: earlier first
    return dict(top[0], metric=metric, top=top)


def over_training_layer(model: DiagnosedModel, layers: list[int], recommended: dict | None) -> int:
    """The layer followed over training: the supervised one, else the backbone's default
    (so that runs with and without CAMEO are compared on the same layer), else the
    recommended one."""
    for layer in (model.supervised_layer, model.backbone.default_layer):
        if layer in layers:
            return layer
    return recommended["layer"] if recommended is not None else layers[0]


# -- the job -----------------------------------------------------------------------------------


def run_diagnose(request: DiagnoseRequest, console: Console | None = None) -> dict:
    """Run every part `request` asks for; write JSON + PNGs into `request.out`."""
    from cameo_cli.diagnose import plots
    from cameo_cli.diagnose.perturb import perturbation_study
    from cameo_cli.diagnose.training import run_checkpoints, validation_psnr
    from cameo_cli.files import check_output_folder, staged_folder, write_json
    from cameo_cli.layers import write_recommended_layer

    console = console or Console()
    check_output_folder(request.out, request.overwrite)
    if request.checkpoint is not None and request.run is not None:
        raise CameoError("pass either --checkpoint or --run, not both")
    device = torch.device(request.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoints = run_checkpoints(request.run) if request.run is not None else []
    psnr = validation_psnr(request.run) if checkpoints else []  # a bad metrics file fails early
    first = checkpoints[-1] if checkpoints else request.checkpoint
    model = load_model(request, first, device)
    layers = parse_layers(request.layers, model.backbone)
    multiview = [layer for layer in layers if layer in model.backbone.multiview_layers]
    if request.top_k > len(multiview):
        raise CameoError(
            f"--top-k {request.top_k}: only {len(multiview)} of the diagnosed layers attend "
            "across views; diagnose more layers (--layers) or ask for fewer"
        )
    dataset = open_diagnose_dataset(Path(request.dataset), model.recipe)
    if request.protocol not in PROTOCOLS:
        raise CameoError(f"--protocol: {request.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if request.protocol == "probe3d":
        views = probe3d_pairs(dataset, request.scenes)
    else:
        views = evaluation_views(dataset, request.scenes)
    width = ViewBatch.from_item(dataset.get_views(*views[0])).image_size[1]
    request = dataclasses.replace(request, radii=request.radii.resolved(width))
    metric = world_units(dataset, views) is not None
    result = {
        "backbone": request.backbone,
        "variant": model.variant,
        "model": model.source,
        "step": model.step,
        "dataset": str(request.dataset),
        "protocol": request.protocol,
        "scenes": [{"scene": s, "frames": f, "references": n} for s, f, n in views],
        "timesteps": list(request.timesteps),
        "metric": metric,
        "radii": {
            "tokens": request.radii.tokens,
            "pixels": request.radii.pixels,
            "3d": (
                {"unit": "cm", "values": list(request.radii.metric_cm)}
                if metric
                else {"unit": "token footprints", "values": [request.radii.tokens]}
            ),
        },
        "epsilon": request.epsilon,
        "supervised_layer": model.supervised_layer,
    }
    diagnosis = Diagnosis(request, model, dataset, views)
    with Progress(console=console, transient=True) as progress:
        result["layers"] = layer_precision(diagnosis, layers, progress)
        result["metrics"] = list(result["layers"][0]["attention"]["precision"])
        result["recommended_layer"] = recommend(result["layers"], top_k=request.top_k)
        if checkpoints:
            chosen = over_training_layer(model, layers, result["recommended_layer"])
            result["over_training"] = {
                "layer": chosen,
                "checkpoints": _score_checkpoints(diagnosis, checkpoints, chosen, device, progress),
                "validation_psnr": psnr,
            }
        samples = None
        if request.perturb:
            result["perturbation"], samples = perturbation_study(diagnosis, layers, progress)
    with staged_folder(request.out, request.overwrite) as folder:
        plots.precision_by_layer(result, folder / "precision_by_layer.png")
        plots.precision_by_rotation(result, folder / "precision_by_rotation.png")
        if "over_training" in result:
            plots.precision_over_training(result, folder / "precision_over_training.png")
        if "perturbation" in result:
            plots.perturbation_drop(result, folder / "perturbation_drop.png")
            plots.perturbation_samples(samples, folder / "perturbation_samples.png")
        write_json(folder / "diagnose.json", result)
    if request.save_recommendation and result["recommended_layer"] is not None:
        entry = dict(
            result["recommended_layer"],
            radius_px=request.radii.pixels,
            dataset=str(request.dataset),
            model=model.source,
        )
        result["recommendation_file"] = str(
            write_recommended_layer(request.backbone, model.variant, entry)
        )
    console.print(results_table(result))
    console.print(rotation_table(result))
    return result


def _score_checkpoints(
    diagnosis: Diagnosis,
    checkpoints: list[Path],
    layer: int,
    device: torch.device,
    progress: Progress,
) -> list[dict]:
    """The precision of `layer` at each checkpoint, on the diagnosis's view sets."""
    scored = []
    task = progress.add_task("checkpoints", total=len(checkpoints))
    for folder in checkpoints:
        model = load_model(diagnosis.request, folder, device)
        summary = layer_precision(dataclasses.replace(diagnosis, model=model), [layer])[0]
        scored.append(
            {
                "checkpoint": str(folder),
                "step": model.step,
                "precision": summary["attention"]["precision"],
                "projection_head": summary.get("projection_head", {}).get("precision"),
            }
        )
        progress.advance(task)
    return scored


def _cell(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def results_table(result: dict) -> Table:
    """Per-layer precision as a rich table with the lift the recommendation ranks by (the
    recommended layer starred, the rest of the top k ranked); under each layer its chance
    and, for the supervised layer, its precision through the projection head."""
    top = (result.get("recommended_layer") or {}).get("top", [])
    ranks = {row["layer"]: rank for rank, row in enumerate(top, start=1)}
    table = Table(
        title=f"cameo diagnose: {result['backbone']}/{result['variant']}",
        caption="chance: the same rows scored with the keys shuffled; lift = precision - "
        "chance; 'N head': layer N through its CAMEO projection head",
        collapse_padding=True,
    )
    table.add_column("layer", justify="right", no_wrap=True)
    table.add_column("path")
    table.add_column("3D", justify="center")
    table.add_column("grid", justify="right")
    for metric in result["metrics"]:
        table.add_column(metric_label(metric, result["radii"]), justify="right")
    label = metric_label(RECOMMEND_METRIC, result["radii"])
    table.add_column(f"lift {label}", justify="right", min_width=6)
    table.add_column("drop PSNR", justify="right")
    drops = {
        row["layer"]: row["psnr_drop"] for row in result.get("perturbation", {}).get("layers", [])
    }
    for summary in result["layers"]:
        drop = drops.get(summary["layer"])
        rank = ranks.get(summary["layer"])
        mark = "" if rank is None else " ★" if rank == 1 else f" #{rank}"
        layer = (
            summary["path"],
            "yes" if summary["multiview"] else "no",
            "x".join(map(str, summary["grid"])),
        )
        rows = [(f"{summary['layer']}{mark}", layer, summary["attention"], None)]
        rows.append(("chance", ("",) * 3, {"precision": summary["chance"], "lift": {}}, "dim"))
        if "projection_head" in summary:
            rows.append((f"{summary['layer']} head", layer, summary["projection_head"], None))
        for name, about, scored, style in rows:
            table.add_row(
                name,
                *about,
                *(_cell(scored["precision"][m]) for m in result["metrics"]),
                _cell(scored["lift"].get(RECOMMEND_METRIC)),
                f"{drop:.2f}" if drop is not None and scored is summary["attention"] else "-",
                style=style,
            )
    return table


def rotation_table(result: dict) -> Table:
    """The 3D headline metric (Precision@2cm on metric data) per layer and rotation bin."""
    metric = headline_metric(result["metrics"])
    label = metric_label(metric, result["radii"])
    table = Table(title=f"precision {label} by relative rotation (rows scored)")
    table.add_column("layer", justify="right")
    for name in ROTATION_BINS:
        table.add_column(f"{name}°", justify="right")
    for summary in result["layers"]:
        by_rotation = summary["attention"]["by_rotation"]
        table.add_row(
            str(summary["layer"]),
            *(
                f"{_cell(by_rotation[b]['precision'][metric])} ({by_rotation[b]['rows']})"
                for b in ROTATION_BINS
            ),
        )
    return table
