"""Prepared datasets on disk: safetensors shards + index.json + eval_index.json.

Layout of a prepared folder::

    index.json          scenes, frames, shards (sha256), source, cameo version, skips;
                        a scene's "metres_per_unit" when its world is metric (DTU, NAVI)
    eval_index.json     {scene: {"context": [...], "target": [...]}} (frame indices)
    shards/shard-00000.safetensors   one file per group of scenes
    shards/shard-00000.json          the shard's manifest (what index.json is assembled from)
    .cameo-prepare.json the plan (which scenes go into which shard), for resuming
    part-00001-of-00004/ a part (`--part 1/4`, `cameo_cli.data.parts`): a prepared folder of
                        its own; `--merge` writes the index.json above listing its shards
                        by relative path (``part-00001-of-00004/shards/...``)

Inside a shard, for every scene ``S`` with ``N`` frames (no pickle, plain tensors):

    S/image/{k}        uint8 [bytes]    PNG of frame k
    S/intrinsics       float64 [N,3,3]  pixel K at the stored image size
    S/world_to_camera  float64 [N,4,4]  OpenCV world-to-camera
    S/depth_fp16       float16 [N,h,w]  z-depth / meta["depth_unit"], 0 = unknown (optional)
    S/mask/{k}         uint8 [bytes]    PNG object mask of frame k    (optional)

The depth grid (h, w) = meta["depth_size"] is the image size divided by ``depth_divisor``,
sampled by nearest pixel; point maps are unprojected from it with the stored cameras when
read. Default 1: float16 at the image size is 6x smaller than the float32 point maps format 1
stored for VGGT (2x smaller than float32 depth) and gives the paper-grid targets unchanged;
4 (a quarter of each side) is 16x smaller again, but moves about 3.5 % of the 32 x 32 targets
at 512 px, mostly at depth edges (`benchmarks/geometry_storage.py`).
Datasets of format 1 (``S/depth`` float32 [N,H,W] or ``S/point_map`` float32 [N,H,W,3] at
the image size, NaN = unknown) still load.

Preparing is resumable (a finished shard whose checksum matches its manifest is kept), atomic
(every file is written to a temporary name and renamed) and parallel (worker processes).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import queue
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors import SafetensorError, safe_open

from cameo_cli import __version__
from cameo_cli.data.parts import Part
from cameo_cli.data.records import (
    FrameData,
    SceneData,
    SceneSource,
    Skip,
    SkipScene,
    check_camera,
    downscale_frame,
    encode_png,
    nearest_indices,
)
from cameo_cli.data.vggt_scenes import VGGTSettings
from cameo_cli.errors import CameoError
from cameo_cli.files import atomic_path, check_safetensors, read_json, write_json

FORMAT = "cameo-multiview"
FORMAT_VERSION = 2
DEPTH_DIVISOR = 1
PLAN_FILE = ".cameo-prepare.json"
LOCK_FILE = ".cameo-prepare.lock"
MIN_FRAMES = 2


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- writing


@dataclass
class PrepareReport:
    out: Path
    dataset: str
    scenes: int = 0
    frames: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    skipped: list[Skip] = field(default_factory=list)
    fits: dict[str, dict] = field(default_factory=dict)  # VGGT scale fit per kept scene


def _frame_problem(frame: FrameData, size: tuple[int, int], extras: list[str]) -> str | None:
    """What makes a frame unlike the rest of its scene (size, missing geometry or mask)."""
    if frame.image.shape[:2] != size:
        return f"image size {frame.image.shape[:2]} differs from the scene's first frame {size}"
    for key in extras:
        value = getattr(frame, key)
        if value is None:
            return f"no {key} while other frames of the scene have one"
        if value.shape[:2] != size:
            return f"{key} of size {value.shape[:2]} for an image of {size}"
    return None


def compact_depth(depths: np.ndarray, divisor: int) -> tuple[np.ndarray, tuple[int, int], float]:
    """Float depth [N, H, W] (0 or non-finite = unknown) -> (float16 [N, h, w] in units of
    the median known depth, (h, w), that unit): nearest pixels of an (H / divisor, W / divisor)
    grid; depths float16 cannot hold (over 65504 units) become unknown."""
    height, width = depths.shape[1:]
    size = (max(1, round(height / divisor)), max(1, round(width / divisor)))
    rows = nearest_indices(height, size[0], 0, size[0])
    cols = nearest_indices(width, size[1], 0, size[1])
    picked = depths[:, rows][:, :, cols].astype(np.float64)
    known = np.isfinite(picked) & (picked > 0)
    unit = float(np.median(picked[known])) if known.any() else 1.0
    scaled = np.where(known, picked / unit, 0.0)
    with np.errstate(over="ignore"):
        half = scaled.astype(np.float16)
    half[~np.isfinite(half)] = 0
    return np.ascontiguousarray(half), size, unit


def _scene_tensors(
    data: SceneData,
    vggt_weights: Path | None = None,
    short_side: int | None = None,
    depth_divisor: int = DEPTH_DIVISOR,
    vggt_settings: VGGTSettings | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], list[Skip]]:
    """Validate a scene's frames (downscale, add VGGT depth), make tensors + metadata."""
    skipped = list(data.skipped)
    frames = []
    extras = [k for k in ("depth", "mask") if any(getattr(f, k) is not None for f in data.frames)]
    for frame in data.frames:
        problem = check_camera(frame.intrinsics, frame.world_to_camera) or _frame_problem(
            frame, data.frames[0].image.shape[:2], extras
        )
        if problem is not None:
            skipped.append(Skip(f"{data.scene}/{frame.name}", problem))
        else:
            frames.append(frame)
    if len(frames) < MIN_FRAMES:
        raise SkipScene(f"only {len(frames)} usable frame(s), need at least {MIN_FRAMES}")
    if short_side is not None:
        frames = [downscale_frame(f, short_side) for f in frames]
    fit = None
    if vggt_weights is not None:
        from cameo_cli.data.vggt_scenes import add_vggt_depth

        fit = add_vggt_depth(frames, vggt_weights, vggt_settings or VGGTSettings())
    height, width = frames[0].image.shape[:2]
    s = data.scene
    tensors: dict[str, np.ndarray] = {
        f"{s}/intrinsics": np.stack([f.intrinsics for f in frames]).astype(np.float64),
        f"{s}/world_to_camera": np.stack([f.world_to_camera for f in frames]).astype(np.float64),
    }
    for k, frame in enumerate(frames):
        tensors[f"{s}/image/{k}"] = np.frombuffer(encode_png(frame.image), dtype=np.uint8)
    geometry, depth_meta = [], {}
    if all(f.depth is not None for f in frames):
        half, size, unit = compact_depth(np.stack([f.depth for f in frames]), depth_divisor)
        tensors[f"{s}/depth_fp16"] = half
        geometry.append("depth_fp16")
        depth_meta = {"depth_size": list(size), "depth_unit": unit}
    has_mask = all(f.mask is not None for f in frames)
    if has_mask:
        for k, frame in enumerate(frames):
            png = encode_png(frame.mask.astype(np.uint8) * 255)
            tensors[f"{s}/mask/{k}"] = np.frombuffer(png, dtype=np.uint8)
    meta = {
        "split": data.split,
        "num_frames": len(frames),
        "height": int(height),
        "width": int(width),
        "frames": [f.name for f in frames],
        **(
            {"source_index": [f.source_index for f in frames]}
            if all(f.source_index is not None for f in frames)
            else {}
        ),
        "geometry": geometry,
        **depth_meta,
        **({"vggt_fit": fit} if fit is not None else {}),
        **({"metres_per_unit": data.metres_per_unit} if data.metres_per_unit else {}),
        "mask": has_mask,
    }
    return tensors, meta, skipped


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def build_shard(
    source: SceneSource,
    index: int,
    scenes: list[str],
    out: Path,
    progress: Any = None,
    vggt_weights: Path | None = None,
    short_side: int | None = None,
    depth_divisor: int = DEPTH_DIVISOR,
    vggt_settings: VGGTSettings | None = None,
) -> dict:
    """Read ``scenes``, write ``shards/shard-{index}.safetensors`` and its manifest atomically."""
    from safetensors.numpy import save_file

    shard_dir = out / "shards"
    tensors: dict[str, np.ndarray] = {}
    metas: dict[str, dict] = {}
    skipped: list[Skip] = []
    for scene in scenes:
        try:
            scene_tensors, meta, scene_skips = _scene_tensors(
                source.load_scene(scene), vggt_weights, short_side, depth_divisor, vggt_settings
            )
            tensors.update(scene_tensors)
            metas[scene] = meta
            skipped.extend(scene_skips)
        except SkipScene as exc:
            skipped.append(Skip(scene, str(exc)))
        except (OSError, ValueError) as exc:
            skipped.append(Skip(scene, f"{type(exc).__name__}: {exc}"))
        except Exception as exc:  # a crash (out of memory, a bug): say where, keep the rest
            raise CameoError(
                f"{out}: preparing scene {scene!r} failed ({type(exc).__name__}: {exc}); "
                "finished shards are kept, run the same command again to resume"
            ) from exc
        if progress is not None:
            progress.put(1)
    name = _shard_name(index)
    manifest: dict[str, Any] = {"shard": index, "planned": scenes, "file": None, "sha256": None}
    if tensors:
        path = shard_dir / f"{name}.safetensors"
        with atomic_path(path) as tmp:
            # one metadata key: safetensors writes a map in random order, and shards must be
            # byte-stable
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
            manifest["sha256"] = sha256_file(tmp)
            manifest["bytes"] = tmp.stat().st_size
        manifest["file"] = f"shards/{path.name}"
    manifest["scenes"] = metas
    manifest["skipped"] = [{"item": s.item, "reason": s.reason} for s in skipped]
    write_json(shard_dir / f"{name}.json", manifest, indent=1)
    return manifest


def _finished_manifest(out: Path, index: int, scenes: list[str]) -> dict | None:
    """The manifest of a shard finished by an earlier run, if its checksum still matches."""
    path = out / "shards" / f"{_shard_name(index)}.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("planned") != scenes:
        return None
    if manifest.get("file") is None:
        return manifest if not manifest.get("scenes") else None
    shard = out / manifest["file"]
    if not shard.is_file() or sha256_file(shard) != manifest.get("sha256"):
        return None
    return manifest


_progress_queue: Any = None


def _init_worker(progress: Any) -> None:
    global _progress_queue
    _progress_queue = progress


def _build_shard_in_worker(
    source: SceneSource, index: int, scenes: list[str], out: Path, extra: dict
) -> dict:
    return build_shard(source, index, scenes, out, _progress_queue, **extra)


class _InlineProgress:
    def __init__(self, progress: Progress, task: Any) -> None:
        self.progress, self.task = progress, task

    def put(self, n: int) -> None:
        self.progress.advance(self.task, n)


def _check_out_folder(out: Path, signature: str, overwrite: bool) -> None:
    """Refuse to mix preparations; with ``overwrite`` remove an earlier cameo preparation."""
    if not out.exists() or not any(p.name != LOCK_FILE for p in out.iterdir()):
        return
    plan_path = out / PLAN_FILE
    ours = plan_path.is_file() or (out / "index.json").is_file()
    if not ours:
        raise CameoError(f"{out}: folder is not empty and is not a cameo dataset; choose another")
    try:
        previous = (
            json.loads(plan_path.read_text()).get("signature") if plan_path.is_file() else None
        )
    except ValueError:
        previous = None
    if previous == signature and not overwrite:
        return  # resume (or verify) the same preparation
    if not overwrite:
        raise CameoError(
            f"{out}: holds a dataset prepared with other options; pass --overwrite to replace it"
        )
    for name in ("index.json", "eval_index.json", PLAN_FILE):
        (out / name).unlink(missing_ok=True)
    shard_dir = out / "shards"
    if shard_dir.is_dir():
        for path in shard_dir.iterdir():
            if path.name.startswith("shard-"):
                path.unlink()


def prepare_dataset(
    source: SceneSource,
    out: Path,
    *,
    scenes_per_shard: int = 8,
    workers: int = 1,
    overwrite: bool = False,
    eval_seed: int = 0,
    vggt_weights: Path | None = None,
    vggt_settings: VGGTSettings | None = None,
    short_side: int | None = None,
    depth_divisor: int = DEPTH_DIVISOR,
    part: Part | None = None,
    console: Console | None = None,
) -> PrepareReport:
    """Write ``source`` as shards + index.json + eval_index.json into ``out`` (resumable).

    With ``vggt_weights`` every kept scene gets VGGT depth (`cameo_cli.data.vggt_scenes`,
    with ``vggt_settings``); with ``short_side`` frames are stored with their shorter side at
    most that many pixels; depth is stored at the image size / ``depth_divisor``. With
    ``part`` only that part's scenes, into its own folder ``part.folder(out)``
    (`cameo_cli.data.parts`; `merge_parts` joins the parts).
    """
    console = console or Console(stderr=True)
    out = Path(out) if part is None else part.folder(Path(out))
    options = source.options()
    if vggt_weights is not None:
        from cameo_cli.data.vggt_scenes import check_vggt

        vggt_settings = vggt_settings or VGGTSettings()
        check_vggt(vggt_weights, vggt_settings)
        options = {**options, "vggt_weights": str(vggt_weights), "vggt": asdict(vggt_settings)}
    if depth_divisor < 1:
        raise CameoError(f"--depth-divisor must be at least 1, got {depth_divisor}")
    options = {**options, "depth_divisor": depth_divisor}
    if short_side is not None:
        if short_side < 8:
            raise CameoError(f"--short-side must be at least 8 pixels, got {short_side}")
        options = {**options, "short_side": short_side}
    extra = {
        "vggt_weights": vggt_weights,
        "short_side": short_side,
        "depth_divisor": depth_divisor,
        "vggt_settings": vggt_settings,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise CameoError(f"{out}: --out is a file, not a folder")
    with exclusive(out):
        return _prepare(
            source,
            out,
            options,
            extra,
            scenes_per_shard,
            workers,
            overwrite,
            eval_seed,
            part,
            console,
        )


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold ``out/.cameo-prepare.lock`` so that two preparations never write one folder."""
    out.mkdir(exist_ok=True)
    with open(out / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CameoError(f"{out}: another `cameo prepare` is writing there") from None
        yield


def _prepare(
    source: SceneSource,
    out: Path,
    options: dict,
    extra: dict,
    scenes_per_shard: int,
    workers: int,
    overwrite: bool,
    eval_seed: int,
    part: Part | None,
    console: Console,
) -> PrepareReport:
    signature_data = {"dataset": source.dataset, "options": options, "per_shard": scenes_per_shard}
    signature = hashlib.sha256(json.dumps(signature_data, sort_keys=True).encode()).hexdigest()
    _check_out_folder(out, signature, overwrite)
    scenes, listing_skips = source.list_scenes()
    if not scenes:
        detail = "; ".join(f"{s.item}: {s.reason}" for s in listing_skips[:5])
        raise CameoError(
            f"{source.options().get('root', out)}: no scenes found"
            + (f" ({detail})" if detail else "")
        )
    listed = scenes
    if part is not None:
        scenes = [scene for scene in listed if part.holds(scene)]
    plan = [scenes[i : i + scenes_per_shard] for i in range(0, len(scenes), scenes_per_shard)]
    (out / "shards").mkdir(parents=True, exist_ok=True)
    for stale in (out / "shards").glob("*.tmp-*"):
        stale.unlink()  # left by an interrupted run; finished files are never temporary
    for path in (out / "shards").glob("shard-*"):
        number = path.name.split(".")[0].removeprefix("shard-")
        if number.isdigit() and int(number) >= len(plan):
            path.unlink()  # beyond the plan (the raw dataset lost scenes since the last run)
    write_json(out / PLAN_FILE, {"signature": signature, **signature_data, "plan": plan}, indent=1)

    manifests: dict[int, dict] = {}
    todo = []
    for index, shard_scenes in enumerate(plan):
        done = _finished_manifest(out, index, shard_scenes)
        if done is not None:
            manifests[index] = done
        else:
            todo.append(index)
    report = PrepareReport(out=out, dataset=source.dataset, shards_reused=len(manifests))
    columns = (
        TextColumn(f"[bold]prepare {source.dataset}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("scenes"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("scenes", total=len(scenes))
        progress.advance(task, sum(len(plan[i]) for i in manifests))
        if workers <= 1 or len(todo) <= 1:
            for index in todo:
                manifests[index] = build_shard(
                    source, index, plan[index], out, _InlineProgress(progress, task), **extra
                )
        else:
            manifests.update(_run_parallel(source, plan, todo, out, workers, progress, task, extra))
    report.shards_written = len(todo)

    index = _assemble_index(source, out, plan, manifests, listing_skips, options)
    if part is not None:
        index["part"] = part.record(listed, list(index["scenes"]), eval_seed)
    views, no_views = _eval_index(source, index, eval_seed)
    index["skipped"].extend({"item": s.item, "reason": s.reason} for s in no_views)
    write_json(out / "index.json", index, indent=1)
    write_json(out / "eval_index.json", views, indent=1)
    report.scenes = len(index["scenes"])
    report.frames = index["num_frames"]
    report.skipped = [Skip(s["item"], s["reason"]) for s in index["skipped"]]
    report.fits = {s: m["vggt_fit"] for s, m in index["scenes"].items() if "vggt_fit" in m}
    return report


def _run_parallel(
    source: SceneSource,
    plan: list[list[str]],
    todo: list[int],
    out: Path,
    workers: int,
    progress: Progress,
    task: Any,
    extra: dict,
) -> dict[int, dict]:
    ctx = multiprocessing.get_context("spawn")
    updates = ctx.Queue()
    results: dict[int, dict] = {}
    with ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(updates,),
    ) as pool:
        pending: dict[Future, int] = {
            pool.submit(_build_shard_in_worker, source, i, plan[i], out, extra): i for i in todo
        }
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(updates, progress, task)
            for future in done:
                results[pending.pop(future)] = future.result()
        _drain(updates, progress, task)
    return results


def _drain(updates: Any, progress: Progress, task: Any) -> None:
    while True:
        try:
            progress.advance(task, updates.get_nowait())
        except queue.Empty:
            return


def _assemble_index(
    source: SceneSource,
    out: Path,
    plan: list[list[str]],
    manifests: dict[int, dict],
    listing_skips: list[Skip],
    options: dict,
) -> dict:
    shards, scenes, skipped = [], {}, [{"item": s.item, "reason": s.reason} for s in listing_skips]
    for index in range(len(plan)):
        manifest = manifests[index]
        skipped.extend(manifest["skipped"])
        if manifest["file"] is None:
            continue
        shard_id = len(shards)
        shards.append(
            {
                "file": manifest["file"],
                "sha256": manifest["sha256"],
                "bytes": manifest["bytes"],
                "scenes": list(manifest["scenes"]),
            }
        )
        for scene, meta in manifest["scenes"].items():
            scenes[scene] = {"shard": shard_id, **meta}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cameo_version": __version__,
        "source": {"dataset": source.dataset, "options": options},
        "num_scenes": len(scenes),
        "num_frames": sum(s["num_frames"] for s in scenes.values()),
        "shards": shards,
        "scenes": scenes,
        "skipped": skipped,
    }


def _eval_index(source: SceneSource, index: dict, seed: int) -> tuple[dict, list[Skip]]:
    """Fixed context/target frames per scene (a generator seeded by (seed, scene) where the
    source draws them), and the scenes left out of the evaluation with the reason (scenes the
    source does not evaluate, such as training scenes beside held-out ones, are neither)."""
    views, left_out = {}, []
    for scene, meta in index["scenes"].items():
        rng = np.random.default_rng([seed, zlib.crc32(scene.encode())])
        entry = source.eval_views(scene, meta, rng)
        if entry is None:
            continue
        if isinstance(entry, str):
            left_out.append(Skip(f"{scene} (evaluation)", entry))
        else:
            views[scene] = entry
    return views, left_out


# --------------------------------------------------------------------------- reading


def load_index(root: str | os.PathLike) -> dict:
    """Read and check ``root/index.json``."""
    path = Path(root) / "index.json"
    if not path.is_file():
        raise CameoError(f"{path}: not found; prepare a dataset with `cameo prepare` first")
    index = read_json(path, "dataset index")
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CameoError(f"{path}: not a cameo dataset index (format {index.get('format')!r})")
    if index.get("format_version", 0) > FORMAT_VERSION:
        raise CameoError(f"{path}: written by a newer cameo (format {index['format_version']})")
    return index


def verify_shards(root: str | os.PathLike, index: dict) -> list[str]:
    """Names of shards whose sha256 does not match index.json (empty when all are intact)."""
    root = Path(root)
    bad = []
    for shard in index["shards"]:
        path = root / shard["file"]
        if not path.is_file() or sha256_file(path) != shard["sha256"]:
            bad.append(shard["file"])
    return bad


class ShardReader:
    """Lazy access to the tensors of prepared scenes (memory-mapped safetensors); at most
    ``max_open`` shards are kept open (least recently used closed first).

    Every shard's header and length are checked when the reader is made (in the main
    process, before any data loader worker), so a missing, truncated or foreign shard is a
    one-line `CameoError` naming the file; a tensor that still cannot be read is one too."""

    def __init__(self, root: str | os.PathLike, index: dict, max_open: int = 32) -> None:
        self.root = Path(root)
        self.index = index
        self.max_open = max_open
        self._open: OrderedDict[int, Any] = OrderedDict()
        for shard in index["shards"]:
            path = self.root / shard["file"]
            if not path.is_file():
                raise CameoError(f"{path}: shard listed in index.json is missing")
            check_safetensors(path)

    def _shard(self, scene: str) -> Any:
        shard_id = self.index["scenes"][scene]["shard"]
        if shard_id not in self._open:
            path = self.root / self.index["shards"][shard_id]["file"]
            if not path.is_file():
                raise CameoError(f"{path}: shard listed in index.json is missing")
            if len(self._open) >= self.max_open:
                self._open.popitem(last=False)
            try:
                self._open[shard_id] = safe_open(str(path), framework="numpy")
            except (SafetensorError, OSError) as error:
                raise CameoError(f"{path}: cannot read the shard ({error})") from None
        self._open.move_to_end(shard_id)
        return self._open[shard_id]

    def _tensor(self, scene: str, key: str) -> np.ndarray:
        path = self.root / self.index["shards"][self.index["scenes"][scene]["shard"]]["file"]
        try:
            return self._shard(scene).get_tensor(key)
        except (SafetensorError, OSError) as error:
            raise CameoError(f"{path}: cannot read {key!r} ({error})") from None

    def __getstate__(self) -> dict:  # open handles stay in the process that opened them
        return {**self.__dict__, "_open": OrderedDict()}

    def cameras(self, scene: str) -> tuple[np.ndarray, np.ndarray]:
        return (
            self._tensor(scene, f"{scene}/intrinsics"),
            self._tensor(scene, f"{scene}/world_to_camera"),
        )

    def image(self, scene: str, frame: int) -> np.ndarray:
        """uint8 [H, W, 3]."""
        data = self._tensor(scene, f"{scene}/image/{frame}").tobytes()
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))

    def mask(self, scene: str, frame: int) -> np.ndarray | None:
        """bool [H, W] or None when the scene has no masks."""
        if not self.index["scenes"][scene].get("mask"):
            return None
        data = self._tensor(scene, f"{scene}/mask/{frame}").tobytes()
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img) > 127

    def geometry(self, scene: str, key: str, frames: list[int]) -> np.ndarray | None:
        """``depth_fp16`` [F, h, w] (times meta["depth_unit"]), or of format 1 ``depth``
        [F, H, W] or ``point_map`` [F, H, W, 3], of some frames; None if absent."""
        if key not in self.index["scenes"][scene].get("geometry", []):
            return None
        sl = self._shard(scene).get_slice(f"{scene}/{key}")
        return np.stack([sl[f] for f in frames])
