"""Camera files for `cameo sample`: read (and write) three formats into one `CameraSet`.

- **RealEstate10K** (`.txt`): an optional URL line, then one line per frame:
  `timestamp fx fy cx cy k1 k2 r00 r01 r02 t0 r10 r11 r12 t1 r20 r21 r22 t2`, intrinsics
  normalised by the image size, a 3x4 OpenCV world-to-camera.
- **cameo JSON** (`.json` with a "cameras" list)::

      {"convention": "opencv" | "opengl",        # camera axes (default opencv)
       "intrinsics_type": "pixel" | "normalized", # default pixel
       "width": W, "height": H,                   # the image size pixel intrinsics refer to
       "intrinsics": [[fx,0,cx],[0,fy,cy],[0,0,1]] or {"fx":..,"fy":..,"cx":..,"cy":..},
       "cameras": [{"world_to_camera": 4x4 or 3x4} or {"camera_to_world": ...},
                   ...]}                          # "intrinsics", "width", "height", "name"
                                                  # may be given per camera too
- **nerfstudio** `transforms.json` (`.json` with a "frames" list): OpenGL camera-to-world
  `transform_matrix`, pixel `fl_x fl_y cx cy w h` at the top level or per frame (a frame's
  own values win). Lens distortion is not modelled: non-zero coefficients are refused.

Every conversion goes through `cameo_cli.cameras`. Poses are kept in float64.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cameo_cli import cameras
from cameo_cli.data.re10k import parse_pose_line
from cameo_cli.errors import CameoError

_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


@dataclass
class CameraSet:
    """N cameras: OpenCV world-to-camera poses and normalised intrinsics (float64).

    `image_sizes[i]` is the (H, W) the file states for camera i, or None when the file
    gives normalised intrinsics only (RealEstate10K).
    """

    world_to_camera: torch.Tensor  # [N, 4, 4]
    normalized_intrinsics: torch.Tensor  # [N, 3, 3]: x row / W, y row / H
    image_sizes: list[tuple[int, int] | None]
    names: list[str]

    def __len__(self) -> int:
        return self.world_to_camera.shape[0]

    def select(self, indices: Sequence[int]) -> CameraSet:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return CameraSet(
            self.world_to_camera[index],
            self.normalized_intrinsics[index],
            [self.image_sizes[i] for i in indices],
            [self.names[i] for i in indices],
        )

    def pixel_intrinsics(self, sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Pixel K [N, 3, 3] for images of `sizes[i]` (H, W)."""
        return torch.stack(
            [
                cameras.normalized_to_pixel_intrinsics(K, h, w)
                for K, (h, w) in zip(self.normalized_intrinsics, sizes, strict=True)
            ]
        )

    def at_resolution(
        self, sizes: Sequence[tuple[int, int]], resolution: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel K [N, 3, 3], w2c [N, 4, 4]) after resizing each image of `sizes[i]` so its
        shorter side is `resolution` and centre-cropping a square (as the images are)."""
        K = self.pixel_intrinsics(sizes)
        K = torch.stack(
            [
                cameras.resize_center_crop_intrinsics(k, size, resolution)
                for k, size in zip(K, sizes, strict=True)
            ]
        )
        return K, self.world_to_camera.clone()

    @classmethod
    def from_pixel(
        cls,
        intrinsics: torch.Tensor,
        world_to_camera: torch.Tensor,
        image_size: tuple[int, int],
        names: Sequence[str] | None = None,
    ) -> CameraSet:
        """Cameras with pixel K [N, 3, 3] for images of `image_size` (H, W)."""
        height, width = image_size
        count = world_to_camera.shape[0]
        return cls(
            world_to_camera.to(torch.float64),
            cameras.pixel_to_normalized_intrinsics(intrinsics.to(torch.float64), height, width),
            [(height, width)] * count,
            list(names) if names is not None else [f"{i:03d}" for i in range(count)],
        )


# -- reading ---------------------------------------------------------------------------------


def read_cameras(path: str | Path) -> CameraSet:
    """Read a RealEstate10K `.txt`, a cameo camera JSON or a nerfstudio `transforms.json`."""
    path = Path(path)
    if not path.is_file():
        raise CameoError(f"{path}: camera file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CameoError(f"{path}: cannot read the camera file ({error})") from error
    if path.suffix.lower() != ".json":
        camera_set = _parse_re10k(text, path)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise CameoError(f"{path}: not valid JSON ({error})") from error
        if isinstance(data, dict) and isinstance(data.get("frames"), list):
            camera_set = _parse_nerfstudio(data, path)
        elif isinstance(data, dict) and isinstance(data.get("cameras"), list):
            camera_set = _parse_cameo_json(data, path)
        else:
            raise CameoError(
                f"{path}: a camera JSON needs a 'cameras' list (cameo format) or a 'frames' "
                "list (nerfstudio transforms.json)"
            )
    if len(camera_set) == 0:
        raise CameoError(f"{path}: no cameras in the file")
    _check_cameras(camera_set, path)
    return camera_set


def _check_cameras(camera_set: CameraSet, path: Path) -> None:
    for i, (pose, K) in enumerate(
        zip(camera_set.world_to_camera, camera_set.normalized_intrinsics, strict=True)
    ):
        name = camera_set.names[i]
        if not (torch.isfinite(pose).all() and torch.isfinite(K).all()):
            raise CameoError(f"{path}: camera {name} has non-finite values")
        rotation = pose[:3, :3]
        identity = torch.eye(3, dtype=rotation.dtype)
        if not torch.allclose(rotation @ rotation.T, identity, atol=1e-3) or rotation.det() < 0:
            raise CameoError(f"{path}: camera {name}: the pose's 3x3 block is not a rotation")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise CameoError(f"{path}: camera {name}: focal lengths must be positive")


def _parse_re10k(text: str, path: Path) -> CameraSet:
    poses, intrinsics, names = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or (number == 1 and len(fields) == 1):  # blank, or the video URL
            continue
        try:
            _, K, w2c = parse_pose_line(line)
        except ValueError as error:
            raise CameoError(f"{path}:{number}: a RealEstate10K line: {error}") from None
        intrinsics.append(torch.from_numpy(K))
        poses.append(torch.from_numpy(w2c))
        names.append(fields[0])
    if not poses:
        return CameraSet(
            torch.zeros(0, 4, 4, dtype=torch.float64),
            torch.zeros(0, 3, 3, dtype=torch.float64),
            [],
            [],
        )
    return CameraSet(torch.stack(poses), torch.stack(intrinsics), [None] * len(poses), names)


def _matrix(value: object, where: str, path: Path) -> torch.Tensor:
    try:
        matrix = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as error:
        raise CameoError(f"{path}: {where} is not a numeric matrix") from error
    if matrix.shape == (3, 4):
        return cameras.pose_from_3x4(matrix)
    if matrix.shape != (4, 4):
        raise CameoError(f"{path}: {where} must be 4x4 or 3x4, got {tuple(matrix.shape)}")
    return matrix


def _number(entry: dict, key: str, where: str, path: Path) -> float:
    value = entry.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise CameoError(f"{path}: {where}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def _intrinsics(value: object, where: str, path: Path) -> torch.Tensor:
    if isinstance(value, dict):
        fx, fy, cx, cy = (
            torch.tensor(_number(value, key, where, path), dtype=torch.float64)
            for key in ("fx", "fy", "cx", "cy")
        )
        return cameras.intrinsics_matrix(fx, fy, cx, cy)
    try:
        K = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as error:
        raise CameoError(f"{path}: {where}: intrinsics are not a numeric 3x3 matrix") from error
    if K.shape != (3, 3):
        raise CameoError(f"{path}: {where}: intrinsics must be 3x3, got {tuple(K.shape)}")
    return K


def _size(entry: dict, defaults: dict, where: str, path: Path) -> tuple[int, int] | None:
    width = entry.get("width", defaults.get("width"))
    height = entry.get("height", defaults.get("height"))
    if width is None and height is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise CameoError(f"{path}: {where}: 'width' and 'height' must be positive integers")
    return height, width


def _parse_cameo_json(data: dict, path: Path) -> CameraSet:
    convention = data.get("convention", "opencv")
    if convention not in ("opencv", "opengl"):
        raise CameoError(f"{path}: 'convention' must be 'opencv' or 'opengl', got {convention!r}")
    kind = data.get("intrinsics_type", "pixel")
    if kind not in ("pixel", "normalized"):
        raise CameoError(f"{path}: 'intrinsics_type' must be 'pixel' or 'normalized', got {kind!r}")
    poses, intrinsics, sizes, names = [], [], [], []
    for i, entry in enumerate(data["cameras"]):
        where = f"camera {i}"
        if not isinstance(entry, dict):
            raise CameoError(f"{path}: {where} is not an object")
        if ("world_to_camera" in entry) == ("camera_to_world" in entry):
            raise CameoError(
                f"{path}: {where} needs exactly one of 'world_to_camera' and 'camera_to_world'"
            )
        if "world_to_camera" in entry:
            w2c = _matrix(entry["world_to_camera"], f"{where} world_to_camera", path)
            if convention == "opengl":
                w2c = cameras.w2c_opengl_to_opencv(w2c)
        else:
            c2w = _matrix(entry["camera_to_world"], f"{where} camera_to_world", path)
            if convention == "opengl":
                c2w = cameras.c2w_opengl_to_opencv(c2w)
            w2c = cameras.c2w_to_w2c(c2w)
        if "intrinsics" not in entry and "intrinsics" not in data:
            raise CameoError(f"{path}: {where} has no 'intrinsics' (per camera or shared)")
        K = _intrinsics(entry.get("intrinsics", data.get("intrinsics")), where, path)
        size = _size(entry, data, where, path)
        if kind == "pixel":
            if size is None:
                raise CameoError(
                    f"{path}: {where}: pixel intrinsics need the image 'width' and 'height'"
                )
            K = cameras.pixel_to_normalized_intrinsics(K, *size)
        poses.append(w2c)
        intrinsics.append(K)
        sizes.append(size)
        names.append(str(entry.get("name", f"{i:03d}")))
    return CameraSet(torch.stack(poses), torch.stack(intrinsics), sizes, names)


def _parse_nerfstudio(data: dict, path: Path) -> CameraSet:
    poses, intrinsics, sizes, names = [], [], [], []
    for i, frame in enumerate(data["frames"]):
        where = f"frame {i}"
        if not isinstance(frame, dict) or "transform_matrix" not in frame:
            raise CameoError(f"{path}: {where} has no 'transform_matrix'")
        merged = {**data, **frame}
        for key in _DISTORTION_KEYS:
            if merged.get(key, 0) not in (0, 0.0):
                raise CameoError(
                    f"{path}: {where}: lens distortion ({key}={merged[key]}) is not supported; "
                    "undistort the images and set the coefficients to 0"
                )
        fx, fy, cx, cy = (
            torch.tensor(_number(merged, key, where, path), dtype=torch.float64)
            for key in ("fl_x", "fl_y", "cx", "cy")
        )
        width, height = (int(_number(merged, key, where, path)) for key in ("w", "h"))
        c2w = _matrix(frame["transform_matrix"], f"{where} transform_matrix", path)
        poses.append(cameras.c2w_to_w2c(cameras.c2w_opengl_to_opencv(c2w)))
        K = cameras.intrinsics_matrix(fx, fy, cx, cy)
        intrinsics.append(cameras.pixel_to_normalized_intrinsics(K, height, width))
        sizes.append((height, width))
        names.append(str(frame.get("file_path", f"{i:03d}")))
    return CameraSet(torch.stack(poses), torch.stack(intrinsics), sizes, names)


def match_cameras(camera_set: CameraSet, image_paths: Sequence[Path], path: Path) -> CameraSet:
    """The cameras of `image_paths`, in their order.

    Equal counts are taken in file order; otherwise every image must be found by file name
    among the cameras' names (nerfstudio `file_path`, cameo JSON `name`).
    """
    if len(camera_set) == len(image_paths):
        return camera_set
    by_name = {Path(name).name: i for i, name in enumerate(camera_set.names)}
    missing = [p.name for p in image_paths if p.name not in by_name]
    if missing:
        raise CameoError(
            f"{path}: {len(camera_set)} cameras for {len(image_paths)} images, and no camera "
            f"is named after {', '.join(missing)}: give one camera per image, in order"
        )
    return camera_set.select([by_name[p.name] for p in image_paths])


# -- writing ---------------------------------------------------------------------------------


def _pixel(camera_set: CameraSet, fallback: tuple[int, int]) -> tuple[torch.Tensor, list]:
    sizes = [size or fallback for size in camera_set.image_sizes]
    return camera_set.pixel_intrinsics(sizes), sizes


def to_re10k(camera_set: CameraSet, url: str = "") -> str:
    """RealEstate10K text: normalised intrinsics, 3x4 OpenCV world-to-camera per line."""
    lines = [url] if url else []
    for i, (pose, K) in enumerate(
        zip(camera_set.world_to_camera, camera_set.normalized_intrinsics, strict=True)
    ):
        name = camera_set.names[i]
        timestamp = name if name.isdigit() else str(i)
        numbers = [K[0, 0], K[1, 1], K[0, 2], K[1, 2], 0.0, 0.0, *pose[:3].reshape(-1)]
        lines.append(" ".join([timestamp, *(f"{float(v):.12g}" for v in numbers)]))
    return "\n".join(lines) + "\n"


def to_cameo_json(
    camera_set: CameraSet,
    *,
    image_size: tuple[int, int],
    convention: str = "opencv",
    pose: str = "world_to_camera",
) -> dict:
    """A cameo camera JSON with pixel intrinsics (cameras without a size get `image_size`)."""
    K, sizes = _pixel(camera_set, image_size)
    entries = []
    for i, w2c in enumerate(camera_set.world_to_camera):
        if pose == "world_to_camera":
            matrix = cameras.w2c_opencv_to_opengl(w2c) if convention == "opengl" else w2c
        else:
            c2w = cameras.w2c_to_c2w(w2c)
            matrix = cameras.c2w_opencv_to_opengl(c2w) if convention == "opengl" else c2w
        height, width = sizes[i]
        entries.append(
            {
                "name": camera_set.names[i],
                "width": width,
                "height": height,
                "intrinsics": K[i].tolist(),
                pose: matrix.tolist(),
            }
        )
    return {"convention": convention, "intrinsics_type": "pixel", "cameras": entries}


def to_nerfstudio(camera_set: CameraSet, *, image_size: tuple[int, int]) -> dict:
    """A nerfstudio `transforms.json` (per-frame intrinsics, OpenGL camera-to-world)."""
    K, sizes = _pixel(camera_set, image_size)
    frames = []
    for i, w2c in enumerate(camera_set.world_to_camera):
        height, width = sizes[i]
        c2w = cameras.c2w_opencv_to_opengl(cameras.w2c_to_c2w(w2c))
        frames.append(
            {
                "file_path": camera_set.names[i],
                "fl_x": float(K[i, 0, 0]),
                "fl_y": float(K[i, 1, 1]),
                "cx": float(K[i, 0, 2]),
                "cy": float(K[i, 1, 2]),
                "w": width,
                "h": height,
                "transform_matrix": c2w.tolist(),
            }
        )
    return {"camera_model": "OPENCV", "frames": frames}
