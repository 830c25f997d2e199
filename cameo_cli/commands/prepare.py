"""`cameo prepare DATASET`: turn a raw dataset into shards + index.json + eval_index.json."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from cameo_cli.data.merge import merge_parts
from cameo_cli.data.parts import Part, parse_part, part_from_environment
from cameo_cli.data.records import SceneSource
from cameo_cli.data.shards import PrepareReport, prepare_dataset
from cameo_cli.data.vggt_scenes import VGGTSettings
from cameo_cli.errors import CameoError

# options that only some datasets read: giving one to another dataset is a mistake
APPLIES_TO = {
    "root": ("re10k", "dtu", "navi"),
    "videos": ("re10k",),
    "eval_index": ("re10k",),
    "protocol": ("dtu",),
    "short_side": ("re10k", "dtu", "navi"),
    "scenes": ("synthetic",),
    "test_scenes": ("synthetic",),
    "texture_scale": ("synthetic",),
    "frames": ("synthetic",),
    "resolution": ("synthetic",),
}

MAX_LISTED = 50  # skipped items printed; index.json lists them all

DATASETS = {
    "re10k": "RealEstate10K: pose .txt files + frames, local videos, or pixelSplat .torch chunks",
    "dtu": "DTU: MVSNet (Cameras/*_cam.txt) or pixelNeRF (cameras.npz) layout",
    "navi": "NAVI v1.0 or v1.5: <object>/<scene>/annotations.json + images, depth, masks",
    "synthetic": "procedural textured rooms rendered with exact depth (no download)",
}


def _make_source(dataset: str, opts: dict) -> SceneSource:
    if dataset == "synthetic":
        from cameo_cli.data.synthetic import SyntheticSource

        return SyntheticSource(
            scenes=32 if opts["scenes"] is None else opts["scenes"],
            resolution=64 if opts["resolution"] is None else opts["resolution"],
            frames=16 if opts["frames"] is None else opts["frames"],
            seed=opts["seed"],
            split=opts["split"] or "train",
            geometry=opts["geometry"] or "depth",
            test_scenes=16 if opts["test_scenes"] is None else opts["test_scenes"],
            texture_scale=1.0 if opts["texture_scale"] is None else opts["texture_scale"],
        )
    if opts["root"] is None:
        raise CameoError(f"prepare {dataset}: --root DIR is required")
    root = Path(opts["root"])
    if not root.is_dir():
        raise CameoError(f"{root}: --root is not a folder")
    if dataset == "re10k":
        from cameo_cli.data.re10k import RealEstate10KSource

        return RealEstate10KSource(
            root=root,
            split=opts["split"] or "train",
            videos=opts["videos"],
            geometry=opts["geometry"] or "none",
            eval_index=opts["eval_index"],
        )
    if dataset == "navi":
        from cameo_cli.data.navi import NaviSource

        return NaviSource(
            root=root, split=opts["split"] or "multiview", geometry=opts["geometry"] or "depth"
        )
    from cameo_cli.data.dtu import DTUSource

    return DTUSource(
        root=root,
        split=opts["split"] or "test",
        geometry=opts["geometry"] or "none",
        protocol=opts["protocol"] or "regnerf",
    )


def print_report(report: PrepareReport, console: Console) -> None:
    console.print(
        f"[bold]{report.dataset}[/] -> {report.out}: {report.scenes} scenes, {report.frames} "
        f"frames; shards written {report.shards_written}, reused {report.shards_reused}"
    )
    if report.fits:
        table = Table(title="VGGT depth scale per scene (fit to the dataset's cameras)")
        for column in ("scene", "windows", "scale", "centre residual", "rotation error"):
            table.add_column(column)
        for scene, fit in list(report.fits.items())[:MAX_LISTED]:
            table.add_row(
                scene,
                str(fit["windows"]),
                f"{fit['scale']:.4g}",
                f"{fit['residual']:.4f}",
                f"{fit['rotation_error_deg']:.2f} deg",
            )
        console.print(table)
    if report.skipped:
        table = Table(title=f"skipped ({len(report.skipped)})", show_lines=False)
        table.add_column("item")
        table.add_column("reason")
        for skip in report.skipped[:MAX_LISTED]:
            table.add_row(skip.item, skip.reason)
        if len(report.skipped) > MAX_LISTED:
            table.add_row(
                "...", f"{len(report.skipped) - MAX_LISTED} more: see 'skipped' in index.json"
            )
        console.print(table)
    else:
        console.print("nothing skipped")


@click.command(context_settings={"show_default": True})
@click.argument("dataset", required=False)
@click.option("--out", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--root", type=click.Path(), help="Raw dataset folder (re10k, dtu, navi).")
@click.option(
    "--split",
    help="re10k: train|test [default: train]; dtu: test (the --protocol scans)|train|all "
    "[default: test]; navi: multiview|wild_set|all [default: multiview]; synthetic: the "
    "training scenes' label "
    "[default: train].",
)
@click.option("--videos", type=click.Path(), help="re10k: folder of local videos <clip>.mp4.")
@click.option(
    "--eval-index",
    type=click.Path(dir_okay=False),
    help="re10k: pixelSplat-style evaluation index {clip: {context, target}} to use.",
)
@click.option(
    "--protocol",
    type=click.Choice(["regnerf", "pixelnerf", "mvsplat"]),
    help="dtu: evaluation views and scans: regnerf (inputs 25 22 28, 25 targets, masked), "
    "pixelnerf (same inputs, 31 targets), mvsplat (16 scans, context 33 31, 4 targets) "
    "[default: regnerf].",
)
@click.option("--scenes", type=int, help="synthetic: number of training scenes [default: 32].")
@click.option(
    "--test-scenes",
    type=int,
    help="synthetic: held-out scenes (split test, synth-test-NNNNN, never a training scene of "
    "any seed; eval_index.json names only them) [default: 16].",
)
@click.option(
    "--texture-scale",
    type=float,
    help="synthetic: multiply every texture's period by X (4: coarser textures that a 32 px "
    "model can render; same rooms, cameras and depth) [default: 1].",
)
@click.option("--frames", type=int, help="synthetic: frames per scene [default: 16].")
@click.option("--resolution", type=int, help="synthetic: image size [default: 64].")
@click.option(
    "--short-side",
    type=int,
    help="re10k, dtu, navi: store frames with the shorter side at most PX (e.g. 360); K follows.",
)
@click.option("--seed", type=int, default=0, help="Generator and evaluation-index seed.")
@click.option(
    "--geometry",
    type=click.Choice(["depth", "vggt", "none"]),
    help="Geometry stored with the frames [default: depth for synthetic and navi, none otherwise].",
)
@click.option("--vggt-weights", type=click.Path(), help="Local VGGT weights (--geometry vggt).")
@click.option("--vggt-window", type=int, default=24, help="--geometry vggt: frames per VGGT call.")
@click.option(
    "--vggt-overlap",
    type=int,
    default=8,
    help="--geometry vggt: frames shared by consecutive windows (they tie one scale per scene).",
)
@click.option(
    "--depth-divisor",
    type=int,
    default=1,
    help="Store depth (float16) at the image size divided by N (4: a quarter of each side, "
    "16x smaller, moves ~3.5 % of the paper-grid targets).",
)
@click.option("--workers", type=int, default=1, help="Worker processes.")
@click.option("--scenes-per-shard", type=int, default=8, help="Scenes in one shard file.")
@click.option("--overwrite", is_flag=True, help="Replace a dataset prepared with other options.")
@click.option(
    "--part",
    help="Prepare only part I of N (1 <= I <= N; scenes split by a hash of their name) into "
    "--out/part-I-of-N/ [default under torchrun: RANK + 1 of WORLD_SIZE]; then --merge.",
)
@click.option(
    "--merge",
    type=click.Path(file_okay=False),
    help="Instead of preparing: check the finished parts in this folder and write its "
    "index.json and eval_index.json.",
)
def prepare(dataset: str | None, out: str | None, **opts: object) -> None:
    """Prepare DATASET (re10k, dtu, navi, synthetic) into shards.

    Writes the shards and index.json in --out, or in parts (--part I/N, one job each),
    then joins them with `cameo prepare --merge OUT`.
    """
    if opts["merge"] is not None:
        if dataset is not None or out is not None or opts["part"] is not None:
            raise CameoError("--merge OUT takes no DATASET, --out or --part")
        _merge(Path(opts["merge"]))
        return
    if dataset is None or out is None:
        raise CameoError("prepare needs DATASET and --out OUT (or --merge OUT)")
    if dataset not in DATASETS:
        known = ", ".join(f"{name} ({desc})" for name, desc in DATASETS.items())
        raise CameoError(f"unknown dataset {dataset!r}; known datasets: {known}")
    for name, datasets in APPLIES_TO.items():
        if opts[name] is not None and dataset not in datasets:
            flag = "--" + name.replace("_", "-")
            raise CameoError(f"{flag} does not apply to {dataset} (only to {', '.join(datasets)})")
    if opts["workers"] < 1 or opts["scenes_per_shard"] < 1:
        raise CameoError("--workers and --scenes-per-shard must be at least 1")
    if opts["geometry"] == "vggt" and not opts["vggt_weights"]:
        raise CameoError("--geometry vggt needs --vggt-weights FILE|DIR (local VGGT-1B weights)")
    part = _part(opts["part"])
    source = _make_source(dataset, opts)
    console = Console(stderr=True)
    report = prepare_dataset(
        source,
        Path(out),
        scenes_per_shard=opts["scenes_per_shard"],
        workers=opts["workers"],
        overwrite=opts["overwrite"],
        eval_seed=opts["seed"],
        vggt_weights=Path(opts["vggt_weights"]) if opts["geometry"] == "vggt" else None,
        vggt_settings=VGGTSettings(window=opts["vggt_window"], overlap=opts["vggt_overlap"]),
        depth_divisor=opts["depth_divisor"],
        short_side=opts["short_side"],
        part=part,
        console=console,
    )
    print_report(report, console)
    if part is not None:
        console.print(f"part {part} done; when every part is: cameo prepare --merge {out}")


def _part(text: str | None) -> Part | None:
    """--part I/N, or the rank's part under torchrun / accelerate launch."""
    launched = part_from_environment()
    if text is None:
        return launched
    if launched is not None:
        raise CameoError(
            f"--part {text} under a launcher of {launched.count} processes: every rank would "
            "prepare the same part; leave --part out (each rank takes RANK + 1 of WORLD_SIZE)"
        )
    return parse_part(text)


def _merge(out: Path) -> None:
    merged = merge_parts(out)
    Console(stderr=True).print(
        f"[bold]merged {merged['parts']['count']} parts[/] -> {out}: {merged['num_scenes']} "
        f"scenes, {merged['num_frames']} frames, {len(merged['shards'])} shards, "
        f"{len(merged['skipped'])} skipped (see index.json)"
    )
