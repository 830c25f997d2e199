"""Multi-view samples from a prepared dataset: F frames of one scene, references first.

Sampling (deterministic given ``seed``, the epoch set by `set_epoch` and the item index):

1. a window of ``gap`` frames, ``gap`` uniform in ``frame_gap`` (clipped to the scene: at
   least ``F - 1``, at most ``N - 1``), at a uniform start; its two ends plus ``F - 2``
   distinct frames inside it;
2. ``N_ref`` uniform in ``[min_refs, max_refs]`` (at most ``F - 1``) references;
3. the order puts them first: ``"random"`` shuffles the F frames and takes the first
   ``N_ref`` as references; ``"even"`` takes references evenly spaced in time (the window's
   ends for two, ends and middle for three, the middle frame for one) and the rest, in time
   order, as targets.

``"official"`` follows the official CAMEO trainer: ``N_ref`` and the order are drawn once per
training batch (`batch_item`, a function of seed and global batch index, so shared by every
sample and process): with probability 0.5 one permutation of the F views for the whole
batch, otherwise the official even spacing (`official_positions`) with the targets last.
Read outside a training batch (``dataset[i]``) an item draws them for itself.

Images are resized (shorter side) and centre-cropped to ``resolution`` with the intrinsics
updated by `cameo_cli.cameras`; point maps are computed on the fly for the output pixels: the
stored depth (at its own, usually coarser, grid) is picked by nearest pixel and unprojected
along each output pixel's ray with the output intrinsics, so no depth is ever interpolated
across a depth edge.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from cameo_cli import cameras
from cameo_cli.data.records import nearest_indices
from cameo_cli.data.shards import ShardReader, load_index
from cameo_cli.errors import CameoError
from cameo_cli.files import read_json
from cameo_cli.geometry.pointmaps import point_map_from_depth

if TYPE_CHECKING:
    from cameo_cli.config import Recipe

log = logging.getLogger(__name__)

ORDERS = ("official", "random", "even")
OFFICIAL_SHUFFLE_RATE = 0.5  # `shuffle_train_rate` of the official configs/config.yaml


def load_eval_index(location: str | os.PathLike) -> dict[str, dict[str, list[int]]]:
    """Read an evaluation index ``{scene: {"context": [...], "target": [...]}}``: the file
    ``location``, or ``location/eval_index.json`` of a prepared dataset folder. Every entry
    must hold lists of frame indices (integers), the context non-empty; a scene without
    targets (written by cameo before it left them out, e.g. 2-frame scenes) is left out with
    a warning."""
    location = Path(location)
    path = location / "eval_index.json" if location.is_dir() else location
    if not path.is_file():
        raise CameoError(f"{path}: evaluation index not found (`cameo prepare` writes one)")
    views = read_json(path, "evaluation index")
    if not isinstance(views, dict):
        raise CameoError(f"{path}: expected a {{scene: {{context, target}}}} object")
    for scene, entry in views.items():
        lists = isinstance(entry, dict) and all(
            isinstance(entry.get(key), list)
            and all(isinstance(f, int) and not isinstance(f, bool) for f in entry[key])
            for key in ("context", "target")
        )
        if not lists or not entry["context"]:
            raise CameoError(
                f"{path}: scene {scene!r} needs non-empty integer lists 'context' and 'target' "
                "(an empty 'target' list leaves the scene out)"
            )
    empty = [scene for scene, entry in views.items() if not entry["target"]]
    if empty:
        log.warning(
            "%s: left out %d scene(s) without target views: %s",
            path,
            len(empty),
            ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else ""),
        )
    return {scene: entry for scene, entry in views.items() if entry["target"]}


def sample_frames(
    num_frames: int,
    num_views: int,
    frame_gap: tuple[int, int],
    rng: np.random.Generator,
) -> list[int]:
    """``num_views`` sorted distinct frame indices spanning a window of the sampled gap."""
    lo = max(frame_gap[0], num_views - 1)
    hi = min(frame_gap[1], num_frames - 1)
    gap = int(rng.integers(min(lo, hi), hi + 1))
    start = int(rng.integers(0, num_frames - gap))
    inside = rng.choice(np.arange(start + 1, start + gap), size=num_views - 2, replace=False)
    return sorted([start, start + gap, *(int(i) for i in inside)])


def _references_first(frames: list[int], positions: list[int]) -> list[int]:
    """The frames at `positions` (the references), then the others in their order."""
    return [frames[i] for i in positions] + [f for i, f in enumerate(frames) if i not in positions]


def order_views(
    frames: list[int], num_refs: int, order: str, rng: np.random.Generator
) -> list[int]:
    """Put references first (per-sample orders): a random shuffle, or references evenly
    spaced in time (rounded positions, the middle frame for one)."""
    if order == "random":
        return [frames[i] for i in rng.permutation(len(frames))]
    if order == "even":
        if num_refs == 1:
            positions = [(len(frames) - 1) // 2]
        else:
            positions = np.round(np.linspace(0, len(frames) - 1, num_refs)).astype(int).tolist()
        return _references_first(frames, positions)
    raise CameoError(f"unknown view order {order!r}; choose one of random, even")


def official_positions(num_views: int, num_refs: int) -> list[int]:
    """The official trainer's evenly spaced references: view ``F // 2 - 1`` for one, else
    ``linspace(0, F - 1, N_ref)`` truncated to integers (F = 4: [1], [0, 3], [0, 1, 3])."""
    if num_refs == 1:
        return [num_views // 2 - 1]
    return np.floor(np.linspace(0, num_views - 1, num_refs)).astype(int).tolist()


def batch_rng(seed: int, batch: int, purpose: str) -> np.random.Generator:
    """A generator for the draws one global training batch shares (the same in every
    process and after a resume): a function of seed, batch index and `purpose`."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode()), batch])


@dataclass(frozen=True)
class OfficialOrder:
    """One draw of the official rule: the reference count and a permutation of the views
    (None: references at `official_positions`, targets last)."""

    num_refs: int
    permutation: tuple[int, ...] | None

    @classmethod
    def draw(
        cls, rng: np.random.Generator, num_views: int, min_refs: int, max_refs: int
    ) -> OfficialOrder:
        """Count uniform in [min_refs, max_refs]; shuffle with `OFFICIAL_SHUFFLE_RATE`."""
        num_refs = int(rng.integers(min_refs, max_refs + 1))
        shuffle = rng.random() < OFFICIAL_SHUFFLE_RATE
        permutation = tuple(rng.permutation(num_views).tolist()) if shuffle else None
        return cls(num_refs, permutation)

    def apply(self, frames: list[int]) -> list[int]:
        """`frames` in this order, references first."""
        if self.permutation is not None:
            return [frames[i] for i in self.permutation]
        return _references_first(frames, official_positions(len(frames), self.num_refs))


class MultiViewDataset(torch.utils.data.Dataset):
    """F views of one scene per item from a folder written by `cameo prepare`.

    Items: ``images [F,3,H,W]`` in [-1, 1], ``intrinsics [F,3,3]`` pixels,
    ``world_to_camera [F,4,4]``, ``ref_mask [F]`` (first N True), ``scene``, ``frames [F]``;
    plus ``point_map [F,3,H,W]`` and ``point_valid [F,H,W]`` when `has_geometry`, and
    ``object_mask [F,H,W]`` when `has_masks` (DTU).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_views: int = 4,
        min_refs: int = 1,
        max_refs: int = 3,
        resolution: int | None = None,
        frame_gap: tuple[int, int] = (1, 64),
        order: str = "random",
        seed: int = 0,
        split: str | None = None,
    ) -> None:
        if num_views < 2:
            raise CameoError(f"num_views must be at least 2, got {num_views}")
        if not 1 <= min_refs <= max_refs:
            raise CameoError(f"need 1 <= min_refs <= max_refs, got {min_refs}, {max_refs}")
        if min_refs >= num_views:
            raise CameoError(f"min_refs {min_refs} leaves no target among {num_views} views")
        if order not in ORDERS:
            raise CameoError(f"unknown view order {order!r}; choose one of {', '.join(ORDERS)}")
        if frame_gap[0] > frame_gap[1] or frame_gap[1] < 1:
            raise CameoError(f"frame_gap must be (low, high) with low <= high, got {frame_gap}")
        self.root = Path(root)
        self.index = load_index(root)
        self.num_views, self.min_refs, self.max_refs = (
            num_views,
            min_refs,
            min(max_refs, num_views - 1),
        )
        self.resolution, self.frame_gap, self.order = resolution, tuple(frame_gap), order
        self.seed, self.epoch = seed, 0
        all_scenes = self.index["scenes"]
        in_split = [s for s, m in all_scenes.items() if split is None or m["split"] == split]
        self.scenes = [s for s in in_split if all_scenes[s]["num_frames"] >= num_views]
        if not self.scenes:
            where = f"split {split!r} of " if split else ""
            raise CameoError(
                f"{self.root}: no scene in {where}the dataset has {num_views} frames "
                f"({len(in_split)} scenes considered)"
            )
        metas = [all_scenes[s] for s in self.scenes]
        self.has_geometry = all(m.get("geometry") for m in metas)
        self.has_masks = all(m.get("mask") for m in metas)
        self.reader = ShardReader(self.root, self.index)

    def __len__(self) -> int:
        return len(self.scenes)

    def set_epoch(self, epoch: int) -> None:
        """Draw different frames in every epoch (the draw stays a function of seed/epoch/index)."""
        self.epoch = epoch

    def sample(self, item: int, batch: int | None = None) -> tuple[str, list[int], int]:
        """(scene, frames with references first, number of references) of one item; under
        the official order, as part of global training batch `batch` when given."""
        rng = np.random.default_rng([self.seed, self.epoch, item])
        scene = self.scenes[item]
        num_frames = self.index["scenes"][scene]["num_frames"]
        frames = sample_frames(num_frames, self.num_views, self.frame_gap, rng)
        if self.order != "official":
            num_refs = int(rng.integers(self.min_refs, self.max_refs + 1))
            return scene, order_views(frames, num_refs, self.order, rng), num_refs
        shared = rng if batch is None else batch_rng(self.seed, batch, "order")
        order = OfficialOrder.draw(shared, self.num_views, self.min_refs, self.max_refs)
        return scene, order.apply(frames), order.num_refs

    def __getitem__(self, item: int) -> dict:
        return self.get_views(*self.sample(item))

    def batch_item(self, item: int, batch: int) -> dict:
        """Item `item` as global training batch `batch` reads it (`train.data`)."""
        return self.get_views(*self.sample(item, batch))

    def get_views(self, scene: str, frames: list[int], num_refs: int) -> dict:
        """The views ``frames`` of ``scene``, the first ``num_refs`` of them references."""
        meta = self.index["scenes"].get(scene)
        if meta is None:
            raise CameoError(f"{self.root}: scene {scene!r} is not in index.json")
        frames = [int(f) for f in frames]
        if any(not 0 <= f < meta["num_frames"] for f in frames):
            raise CameoError(f"{scene}: frames {frames} outside 0..{meta['num_frames'] - 1}")
        if not 0 < num_refs <= len(frames):
            raise CameoError(f"{scene}: num_refs {num_refs} for {len(frames)} views")
        size = (meta["height"], meta["width"])
        K, w2c = self.reader.cameras(scene)
        K = torch.from_numpy(K[frames])
        w2c = torch.from_numpy(w2c[frames])
        images = [self.reader.image(scene, f) for f in frames]
        masks = [self.reader.mask(scene, f) for f in frames] if self.has_masks else None
        # output pixel -> source pixel: (resized size, crop offset, output size) per axis
        mapping = ((size[0], 0, size[0]), (size[1], 0, size[1]))
        if self.resolution is not None:
            rh, rw, top, left = cameras.resize_center_crop_box(size, self.resolution)
            res = self.resolution
            images = [self._resize_crop(im, rh, rw, top, left, res) for im in images]
            K = cameras.resize_center_crop_intrinsics(K, size, res)
            mapping = ((rh, top, res), (rw, left, res))
            if masks is not None:
                rows = nearest_indices(size[0], *mapping[0])
                cols = nearest_indices(size[1], *mapping[1])
                masks = [m[rows][:, cols] for m in masks]
        points = valid = None
        if self.has_geometry:
            points, valid = self._point_map(scene, meta, frames, K, w2c, mapping)
        item = {
            "images": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1,
            "intrinsics": K.float(),
            "world_to_camera": w2c.float(),
            "ref_mask": torch.arange(len(frames)) < num_refs,
            "scene": scene,
            "frames": torch.tensor(frames, dtype=torch.long),
        }
        if self.has_geometry:
            item["point_map"] = points.float()
            item["point_valid"] = valid
        if masks is not None:
            item["object_mask"] = torch.from_numpy(np.stack(masks))
        return item

    def _point_map(
        self,
        scene: str,
        meta: dict,
        frames: list[int],
        K: torch.Tensor,
        w2c: torch.Tensor,
        mapping: tuple[tuple[int, int, int], tuple[int, int, int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """World point maps [F,3,h,w] (float64) and validity [F,h,w] on the output pixels
        (`mapping`: resized size, crop offset and output size per axis; K is the output's):
        stored depth is picked by nearest pixel and unprojected along each output pixel's ray,
        a stored point map (format 1) is picked by nearest pixel."""
        stored = self.reader.geometry(scene, "point_map", frames)
        if stored is not None:
            rows = torch.from_numpy(nearest_indices(stored.shape[1], *mapping[0]))
            cols = torch.from_numpy(nearest_indices(stored.shape[2], *mapping[1]))
            points = torch.from_numpy(stored).double().permute(0, 3, 1, 2)[:, :, rows][..., cols]
            valid = torch.isfinite(points).all(1)
            return torch.nan_to_num(points, nan=0.0, posinf=0.0, neginf=0.0), valid
        depth = self.reader.geometry(scene, "depth_fp16", frames)
        unit = meta.get("depth_unit", 1.0)
        if depth is None:
            depth = self.reader.geometry(scene, "depth", frames)
            unit = 1.0
        if depth is None:
            raise CameoError(f"{self.root}: scene {scene!r} has no depth or point maps")
        rows = torch.from_numpy(nearest_indices(depth.shape[1], *mapping[0]))
        cols = torch.from_numpy(nearest_indices(depth.shape[2], *mapping[1]))
        depth = torch.from_numpy(depth).double()[:, rows][:, :, cols] * unit
        return point_map_from_depth(depth, K, w2c)

    @staticmethod
    def _resize_crop(
        image: np.ndarray, rh: int, rw: int, top: int, left: int, size: int
    ) -> np.ndarray:
        """Resize uint8 [H, W, 3] to (rh, rw) (bicubic, antialiased) and crop size x size."""
        pil = Image.fromarray(image)
        if pil.size != (rw, rh):
            pil = pil.resize((rw, rh), Image.Resampling.BICUBIC)
        return np.asarray(pil)[top : top + size, left : left + size]


def dataset_from_recipe(
    root: str | os.PathLike, recipe: Recipe, *, seed: int, split: str | None = None
) -> MultiViewDataset:
    """The prepared dataset at `root`, sampled as the recipe's `data` section says."""
    data = recipe.data
    return MultiViewDataset(
        root,
        num_views=data.num_views,
        min_refs=data.min_refs,
        max_refs=data.max_refs,
        resolution=data.resolution,
        frame_gap=tuple(data.frame_gap),
        order=data.order,
        seed=seed,
        split=split,
    )
