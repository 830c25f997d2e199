"""A NAVI-format object written by the tests: a textured sphere of 32 mm (convex, so a
point seen by two cameras has its match in both) ray cast with the synthetic renderer from a
ring of cameras, stored as NAVI stores it (JPEG with an EXIF orientation, uint16 disparity
depth, masks, annotations.json with quaternions)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cameo_cli.data.synthetic import Primitive, Texture, cast, look_at

SIZE = (48, 64)  # stored images (h, w)
ANNOTATED = (96, 128)  # the annotations' image_size: the stored images are half of it
FOCAL = 130.0  # px at SIZE
DISTANCE = 300.0  # mm from the object's centre
STEP_DEG = 25.0  # azimuth between consecutive cameras
EXIF_ORIENTATION = 6  # "rotate 90° clockwise to display": the JPEG holds the image turned


@dataclass
class RenderedView:
    image: np.ndarray  # uint8 [H, W, 3] as displayed
    depth: np.ndarray  # float64 [H, W] z-depth in mm, 0 = background
    points: np.ndarray  # float64 [H, W, 3] object coordinates (mm)
    world_to_camera: np.ndarray  # [4, 4]
    intrinsics: np.ndarray  # [3, 3] px at SIZE


def _object() -> tuple[list[Primitive], np.ndarray]:
    noise = Texture("noise", np.array([[0.2, 0.8, 0.3], [0.9, 0.9, 0.9], [0.3, 0.1, 0.4]]),
                    scale=12.0, angle=0.0, salt=7)  # fmt: skip
    prims = [
        Primitive("sphere", np.array([0.0, 0.0, 0.0]), np.full(3, 32.0), 0.0, (noise,)),
    ]
    light = np.array([0.3, 1.0, -0.4])
    return prims, light / np.linalg.norm(light)


def matrix_to_quaternion(rotation: np.ndarray) -> list[float]:
    """(w, x, y, z) of a rotation matrix (Shepperd's method)."""
    m = rotation
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    return [float(v) for v in q]


def render_views(frames: int, elevation_deg: float = 20.0) -> list[RenderedView]:
    """The object from `frames` cameras STEP_DEG apart in azimuth, looking at its centre."""
    prims, light = _object()
    height, width = SIZE
    K = np.array([[FOCAL, 0, width / 2], [0, FOCAL, height / 2], [0, 0, 1.0]])
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    rays = np.stack([(jj - K[0, 2]) / FOCAL, (ii - K[1, 2]) / FOCAL, np.ones_like(jj)], -1)
    views = []
    for k in range(frames):
        azimuth, elevation = math.radians(k * STEP_DEG), math.radians(elevation_deg)
        eye = DISTANCE * np.array(
            [math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
             -math.cos(elevation) * math.cos(azimuth)]
        )  # fmt: skip
        w2c = look_at(eye, np.zeros(3))
        directions = rays.reshape(-1, 3) @ w2c[:3, :3]
        directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
        origins = np.broadcast_to(eye, directions.shape)
        color, points = cast(prims, light, origins, directions)
        depth = points @ w2c[2, :3] + w2c[2, 3]
        hit = depth > 1e-6
        image = np.where(hit[:, None], color, 0.15)
        views.append(
            RenderedView(
                image=np.round(image * 255).astype(np.uint8).reshape(height, width, 3),
                depth=np.where(hit, depth, 0.0).reshape(height, width),
                points=points.reshape(height, width, 3),
                world_to_camera=w2c,
                intrinsics=K,
            )
        )
    return views


def disparity(depth: np.ndarray) -> np.ndarray:
    """NAVI's depth encoding: uint16 655350 / depth_mm, 0 where unknown."""
    safe = np.where(depth > 0, depth, 1.0)
    return np.where(depth > 0, np.round(655350.0 / safe), 0).astype(np.uint16)


def write_scene(folder: Path, views: list[RenderedView], object_id: str) -> list[dict]:
    """Write one NAVI scene folder; returns its annotations."""
    for sub in ("images", "depth", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    scale = ANNOTATED[0] / SIZE[0]
    annotations = []
    for k, view in enumerate(views):
        stored = Image.fromarray(np.ascontiguousarray(np.rot90(view.image, k=1)))
        exif = Image.Exif()
        exif[0x0112] = EXIF_ORIENTATION
        stored.save(folder / "images" / f"{k:03d}.jpg", quality=95, exif=exif)
        Image.fromarray(disparity(view.depth)).save(folder / "depth" / f"{k:03d}.png")
        mask = ((view.depth > 0) * 255).astype(np.uint8)
        Image.fromarray(mask).save(folder / "masks" / f"{k:03d}.png")
        w2c = view.world_to_camera
        annotations.append(
            {
                "object_id": object_id,
                "camera": {
                    "q": matrix_to_quaternion(w2c[:3, :3]),
                    "t": w2c[:3, 3].tolist(),
                    "focal_length": FOCAL * scale,
                    "camera_model": "pixel",
                },
                "filename": f"{k:03d}.jpg",
                "filename_original": f"PXL_{k:04d}.jpg",
                "image_size": list(ANNOTATED),
                "scene_name": folder.name,
                "split": "train",
                "occluded": False,
                "video_id": "",
            }
        )
    (folder / "annotations.json").write_text(json.dumps(annotations))
    return annotations


def write_navi(root: Path, scenes: dict[str, int], object_id: str = "toy_box") -> Path:
    """`root/<object_id>/<scene>` for each {scene folder: number of frames}; returns root."""
    for folder, frames in scenes.items():
        write_scene(root / object_id / folder, render_views(frames), object_id)
    return root
