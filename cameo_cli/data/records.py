"""What a dataset reader hands to the shard writer: scenes of frames with cameras, and skips."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from cameo_cli.errors import CameoError

ROTATION_TOLERANCE = 1e-3
TRAIN_SPLIT = "train"  # the split label of the scenes training reads
HELD_OUT_SPLIT = "test"  # the split label of held-out scenes (validation, evaluation)


@dataclass(frozen=True)
class Skip:
    """Something left out of a prepared dataset and why (shown in the final report)."""

    item: str
    reason: str


class SkipScene(Exception):
    """Raised by a reader when a whole scene cannot be used; the message is the reason."""


@dataclass
class FrameData:
    """One view: an RGB image with its camera and optional geometry, all at the image size."""

    name: str  # timestamp (RealEstate10K), view id (DTU), frame number (synthetic)
    image: np.ndarray  # uint8 [H, W, 3]
    intrinsics: np.ndarray  # float64 [3, 3] pixels
    world_to_camera: np.ndarray  # float64 [4, 4] OpenCV
    depth: np.ndarray | None = None  # float32 [H, W] z-depth, 0 where unknown
    mask: np.ndarray | None = None  # bool [H, W] object mask
    source_index: int | None = None  # position in the source's own frame list (eval indices)


@dataclass
class SceneData:
    scene: str
    frames: list[FrameData]
    split: str = TRAIN_SPLIT
    skipped: list[Skip] = field(default_factory=list)  # frames left out, with reasons
    metres_per_unit: float | None = None  # world units in metres (None: not metric)


class SceneSource(ABC):
    """A dataset reader. Instances are pickled into worker processes: keep them plain data."""

    dataset: str = ""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """JSON-serialisable options recorded in index.json (they identify a preparation)."""

    @abstractmethod
    def list_scenes(self) -> tuple[list[str], list[Skip]]:
        """Scene ids in a fixed order, and scenes rejected while listing."""

    @abstractmethod
    def load_scene(self, scene: str) -> SceneData:
        """Read one scene; raise `SkipScene` with the reason when it cannot be used."""

    def eval_views(self, scene: str, meta: dict, rng: np.random.Generator) -> dict | str | None:
        """Evaluation views of a prepared scene (``meta`` from index.json), as frame indices,
        the reason the scene has none, or None when the scene is not meant for evaluation
        (a training scene beside held-out ones). Default: two context frames, two targets
        between."""
        return interpolation_views(meta["num_frames"], rng)


def interpolation_views(num_frames: int, rng: np.random.Generator, max_gap: int = 48) -> dict | str:
    """Context = the two ends of a window of frames, targets = two frames strictly inside
    (one for three frames); with fewer than three frames, the reason there are none."""
    if num_frames < 3:
        return f"{num_frames} frame(s): no target view between two context views"
    if num_frames < 4:
        return {"context": [0, 2], "target": [1]}
    gap = min(num_frames - 1, max_gap)
    start = int(rng.integers(0, num_frames - gap))
    inside = np.sort(rng.choice(np.arange(start + 1, start + gap), size=2, replace=False))
    return {"context": [start, start + gap], "target": [int(i) for i in inside]}


def check_camera(intrinsics: np.ndarray, world_to_camera: np.ndarray) -> str | None:
    """The problem with a camera (NaN, non-orthonormal rotation, bad K), or None if usable."""
    if not (np.all(np.isfinite(intrinsics)) and np.all(np.isfinite(world_to_camera))):
        return "non-finite camera (NaN or inf in the pose or intrinsics)"
    rot = world_to_camera[:3, :3]
    error = float(np.abs(rot @ rot.T - np.eye(3)).max())
    if error > ROTATION_TOLERANCE:
        return f"rotation is not orthonormal (|R R^T - I| = {error:.2g})"
    if np.linalg.det(rot) < 0:
        return "rotation is a reflection (det R < 0)"
    if intrinsics[0, 0] <= 0 or intrinsics[1, 1] <= 0:
        return "non-positive focal length"
    if not np.allclose(world_to_camera[3], [0, 0, 0, 1]):
        return "last row of the world-to-camera matrix is not [0 0 0 1]"
    return None


def decode_image(data: bytes, what: str, *, exif: bool = False) -> np.ndarray:
    """Fully decode image bytes to uint8 RGB (with ``exif``: turned as its EXIF orientation
    says); a truncated or corrupt file raises SkipScene."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            oriented = ImageOps.exif_transpose(img) if exif else img
            return np.asarray(oriented.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        raise SkipScene(f"{what}: unreadable image ({exc})") from None


def nearest_indices(size: int, resized: int, offset: int, target: int) -> np.ndarray:
    """For each of ``target`` output pixels after resizing ``size`` -> ``resized`` pixels and
    cropping from ``offset``: the source pixel whose area holds the output pixel's centre."""
    centres = (np.arange(target) + 0.5 + offset) * size / resized
    return np.clip(np.floor(centres).astype(np.int64), 0, size - 1)


def downscale_frame(frame: FrameData, short_side: int) -> FrameData:
    """The frame with its shorter side at most ``short_side``: image resampled (antialiased),
    K through `cameo_cli.cameras`, depth / mask by nearest pixel."""
    import torch

    from cameo_cli import cameras

    height, width = frame.image.shape[:2]
    if min(height, width) <= short_side:
        return frame
    scale = short_side / min(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    image = np.asarray(
        Image.fromarray(frame.image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    )
    K = cameras.resize_intrinsics(
        torch.from_numpy(np.asarray(frame.intrinsics, dtype=np.float64)),
        (height, width),
        (new_h, new_w),
    ).numpy()
    rows = nearest_indices(height, new_h, 0, new_h)
    cols = nearest_indices(width, new_w, 0, new_w)

    def pick(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else np.ascontiguousarray(values[rows][:, cols])

    return FrameData(
        name=frame.name,
        image=image,
        intrinsics=K,
        world_to_camera=frame.world_to_camera,
        depth=pick(frame.depth),
        mask=pick(frame.mask),
        source_index=frame.source_index,
    )


def encode_png(image: np.ndarray) -> bytes:
    """Deterministic PNG bytes of a uint8 [H, W] or [H, W, 3] array."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def check_option(dataset: str, flag: str, value: str, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`, else a CameoError naming the reader's --flag."""
    if value not in choices:
        allowed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
        raise CameoError(f"{dataset}: --{flag} must be {allowed}, got {value!r}")
    return value
