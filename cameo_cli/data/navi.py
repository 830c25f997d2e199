"""NAVI reader (google/navi): objects photographed in multi-view and in-the-wild scenes.

Layout (v1.0 names ``multiview_XX_<camera>``, v1.5 names ``multiview-XX-<camera_model>``)::

    <root>/<object_id>/<scene>/annotations.json
    <root>/<object_id>/<scene>/images/000.jpg    (read with its EXIF orientation)
    <root>/<object_id>/<scene>/depth/000.png     (uint16 disparity, optional)
    <root>/<object_id>/<scene>/masks/000.png     (object mask, optional)

``<scene>`` is a multi-view scene or ``wild_set`` (v1.5's ``video-XX-...`` scenes are not
read). ``annotations.json`` is a list with one entry per image: ``filename``, ``image_size``
[h, w] and ``camera`` {``q`` [qw, qx, qy, qz], ``t``, ``focal_length`` px}. The pose
T = translate(t) R(q) maps object coordinates (millimetres) into the camera frame, OpenCV
axes, so it is cameo's world-to-camera with the object as the world; fx = fy =
``focal_length`` with the principal point at the image centre, for an image of
``image_size`` (rescaled when the stored images are smaller, e.g. probe3d's downsampled
copies). Depth in mm = 655350 / value, 0 = unknown; depth and masks are rendered from the
aligned mesh in the annotated orientation and cover the object only.

Scenes are named ``<object_id>__<scene>``; their world unit is 1 mm (``metres_per_unit``).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cameo_cli import cameras
from cameo_cli.data.records import (
    FrameData,
    SceneData,
    SceneSource,
    Skip,
    SkipScene,
    check_option,
    decode_image,
    nearest_indices,
)
from cameo_cli.errors import CameoError
from cameo_cli.files import read_json

MULTIVIEW = re.compile(r"multiview[_-]\d+[_-].+")
WILD_SET = "wild_set"
SPLITS = ("multiview", "wild_set", "all")
DISPARITY_SCALE = 655350.0  # depth in mm = DISPARITY_SCALE / value
MM = 0.001  # NAVI's unit (millimetres) in metres
QUATERNION_TOLERANCE = 1e-3  # | |q| - 1 | above this: not a rotation
ASPECT_TOLERANCE = 0.01
SEPARATOR = "__"


def scene_kind(folder: str) -> str | None:
    """ "multiview" (v1.0 or v1.5 name), "wild_set", or None for other folders."""
    if MULTIVIEW.fullmatch(folder):
        return "multiview"
    return "wild_set" if folder == WILD_SET else None


def decode_disparity(data: bytes, what: str) -> np.ndarray:
    """A NAVI depth PNG (uint16 disparity) -> float32 z-depth [H, W] in mm, 0 = unknown."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            values = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise SkipScene(f"{what}: unreadable depth PNG ({exc})") from None
    if mode not in ("I;16", "I;16B", "I") or values.ndim != 2:
        raise SkipScene(f"{what}: not a 16-bit depth PNG (mode {mode})")
    values = values.astype(np.float64)
    depth = np.divide(DISPARITY_SCALE, values, out=np.zeros_like(values), where=values > 0)
    return depth.astype(np.float32)


def camera_from_annotation(entry: dict) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(K [3,3] px, w2c [4,4], annotated (h, w)) of one annotation; ValueError says why not."""
    camera = entry.get("camera")
    if not isinstance(camera, dict):
        raise ValueError("no 'camera'")
    try:
        q = np.asarray(camera["q"], dtype=np.float64)
        t = np.asarray(camera["t"], dtype=np.float64)
        focal = float(camera["focal_length"])
        height, width = (int(v) for v in entry["image_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed camera or image_size ({exc!r})") from None
    if q.shape != (4,) or t.shape != (3,) or not (np.isfinite(q).all() and np.isfinite(t).all()):
        raise ValueError(f"camera q {q.tolist()} / t {t.tolist()}: need 4 and 3 finite numbers")
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > QUATERNION_TOLERANCE:
        raise ValueError(f"camera q {q.tolist()} is not a unit quaternion (|q| = {norm:.4g})")
    if not (np.isfinite(focal) and focal > 0 and height > 0 and width > 0):
        raise ValueError(f"focal_length {focal} or image_size {[height, width]} not positive")
    w2c = cameras.pose_from_quaternion(torch.from_numpy(q / norm), torch.from_numpy(t))
    f, cx, cy = torch.tensor([focal, width / 2.0, height / 2.0], dtype=torch.float64)
    K = cameras.intrinsics_matrix(f, f, cx, cy)
    return K.numpy(), w2c.numpy(), (height, width)


def _nearest_resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = nearest_indices(values.shape[0], size[0], 0, size[0])
    cols = nearest_indices(values.shape[1], size[1], 0, size[1])
    return np.ascontiguousarray(values[rows][:, cols])


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs(a[0] / a[1] - b[0] / b[1]) <= ASPECT_TOLERANCE * (b[0] / b[1])


class NaviSource(SceneSource):
    """NAVI scenes under ``root``: ``split`` multiview (v1.0 and v1.5 names), wild_set or all;
    ``geometry`` depth (the rendered depth PNGs), vggt or none."""

    dataset = "navi"

    def __init__(self, root: Path, split: str = "multiview", geometry: str = "depth") -> None:
        self.root = Path(root)
        self.split = check_option("navi", "split", split, SPLITS)
        self.geometry = check_option("navi", "geometry", geometry, ("depth", "vggt", "none"))

    def options(self) -> dict:
        return {"root": str(self.root), "split": self.split, "geometry": self.geometry}

    def _folder(self, scene: str) -> Path:
        object_id, _, folder = scene.rpartition(SEPARATOR)
        return self.root / object_id / folder

    def list_scenes(self) -> tuple[list[str], list[Skip]]:
        scenes, skipped = [], []
        for obj in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for folder in sorted(p for p in obj.iterdir() if p.is_dir()):
                kind = scene_kind(folder.name)
                if kind is None or self.split not in (kind, "all"):
                    continue
                scene = f"{obj.name}{SEPARATOR}{folder.name}"
                if not (folder / "annotations.json").is_file():
                    skipped.append(Skip(scene, f"{folder / 'annotations.json'}: not found"))
                else:
                    scenes.append(scene)
        return scenes, skipped

    def load_scene(self, scene: str) -> SceneData:
        folder = self._folder(scene)
        path = folder / "annotations.json"
        try:
            entries = read_json(path, "NAVI annotations")
        except CameoError as exc:
            raise SkipScene(str(exc)) from None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise SkipScene(f"{path}: expected a list of per-image annotations")
        frames, skipped = [], []
        for position, entry in enumerate(entries):
            name = Path(str(entry.get("filename", f"#{position}"))).stem
            try:
                frames.append(self._frame(folder, path, entry, position))
            except SkipScene as exc:
                skipped.append(Skip(f"{scene}/{name}", str(exc)))
        kind = scene_kind(folder.name) or "multiview"
        return SceneData(scene, frames, split=kind, skipped=skipped, metres_per_unit=MM)

    def _frame(self, folder: Path, annotations: Path, entry: dict, position: int) -> FrameData:
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename:
            raise SkipScene(f"{annotations}: entry {position} has no filename")
        try:
            K, w2c, annotated = camera_from_annotation(entry)
        except ValueError as exc:
            raise SkipScene(f"{annotations}: {filename}: {exc}") from None
        image_path = folder / "images" / filename
        if not image_path.is_file():
            raise SkipScene(f"{image_path}: image not found")
        image = decode_image(image_path.read_bytes(), str(image_path), exif=True)
        size = image.shape[:2]
        if not _same_aspect(size, annotated):
            raise SkipScene(
                f"{image_path}: {size[1]}x{size[0]} image for an annotated "
                f"{annotated[1]}x{annotated[0]} (EXIF orientation?)"
            )
        K = cameras.resize_intrinsics(torch.from_numpy(K), annotated, size).numpy()
        stem = Path(filename).stem
        frame = FrameData(stem, image, K, w2c, source_index=position)
        if self.geometry == "depth":
            frame.depth = self._map(folder / "depth" / f"{stem}.png", size, depth=True)
        if (folder / "masks").is_dir():
            frame.mask = self._map(folder / "masks" / f"{stem}.png", size, depth=False)
        return frame

    @staticmethod
    def _map(path: Path, size: tuple[int, int], depth: bool) -> np.ndarray:
        """A depth map (mm) or mask of the image's (h, w) from `path`, by nearest pixel."""
        if not path.is_file():
            raise SkipScene(f"{path}: not found")
        data = path.read_bytes()
        values = (
            decode_disparity(data, str(path))
            if depth
            else decode_image(data, str(path)).max(-1) > 127
        )
        if values.shape != size:
            if not _same_aspect(values.shape, size):
                raise SkipScene(
                    f"{path}: {values.shape[1]}x{values.shape[0]} for a {size[1]}x{size[0]} image"
                )
            values = _nearest_resize(values, size)
        return values
