"""RealEstate10K: the raw release (pose .txt + frames or local videos) and pixelSplat chunks.

Raw release, one camera file per clip (``<root>/<split>/<clip>.txt``)::

    https://www.youtube.com/watch?v=...                       <- the video URL
    timestamp_us fx fy cx cy k1 k2 r11 r12 r13 t1 r21 ... r33 t3   <- one line per frame

fx, cx are divided by the image width, fy, cy by the height; k1 k2 are unused (zero); the
3x4 matrix is world-to-camera in OpenCV axes. Frames come from either

- ``<root>/<split>/<clip>/<timestamp_us>.png|jpg`` (or frames numbered 0..N-1 in order), or
- a local video ``<videos>/<clip>.mp4|webm|mkv|mov``: cameo decodes the frame nearest each
  timestamp with PyAV.

pixelSplat chunks (``<root>/<split>/*.torch`` + ``index.json`` mapping clip -> chunk file):
each chunk is a list of dicts, read with ``torch.load(weights_only=True)``::

    {"url": str, "key": str, "timestamps": int64 [N] (microseconds),
     "cameras": float32 [N, 18] (fx fy cx cy k1 k2 + row-major 3x4 world-to-camera, as above),
     "images": list of N uint8 tensors, each an encoded image file (JPEG/PNG bytes)}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cameo_cli.data.records import (
    FrameData,
    SceneData,
    SceneSource,
    Skip,
    SkipScene,
    decode_image,
)
from cameo_cli.errors import CameoError
from cameo_cli.files import read_json

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SEEK_MARGIN_US = 1_000_000  # seek this far before a wanted timestamp (to the keyframe before)
RESEEK_US = 5_000_000  # jump (seek) instead of decoding through gaps longer than this


@dataclass(frozen=True)
class PoseLine:
    timestamp_us: int
    position: int  # index among the file's pose lines (what evaluation indices count)
    intrinsics_normalized: np.ndarray  # [3, 3], x row / W, y row / H
    world_to_camera: np.ndarray  # [4, 4]


def camera_from_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """18 numbers (fx fy cx cy k1 k2 + 3x4 w2c) -> (normalised K [3,3], w2c [4,4])."""
    fx, fy, cx, cy = values[:4]
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    w2c = np.eye(4)
    w2c[:3] = values[6:18].reshape(3, 4)
    return K, w2c


def parse_pose_line(line: str) -> tuple[int, np.ndarray, np.ndarray]:
    """One pose line "timestamp fx fy cx cy k1 k2 + 3x4 w2c" -> (timestamp in µs,
    normalised K [3, 3], w2c [4, 4]); a malformed line raises ValueError saying why."""
    fields = line.split()
    if len(fields) != 19:
        raise ValueError(
            "expected 19 numbers (timestamp fx fy cx cy k1 k2 + 3x4 world-to-camera), "
            f"got {len(fields)}"
        )
    try:
        timestamp = int(fields[0])
        values = np.array([float(x) for x in fields[1:]], dtype=np.float64)
    except ValueError:
        raise ValueError("not a number") from None
    K, w2c = camera_from_values(values)
    return timestamp, K, w2c


def parse_pose_file(path: Path) -> tuple[str, list[PoseLine], list[Skip]]:
    """Read a camera file: (video URL, pose lines, malformed lines with their reasons)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SkipScene(f"cannot read {path.name} ({exc})") from None
    if not lines or not lines[0].strip():
        raise SkipScene(f"{path.name}: empty camera file (expected a URL line, then poses)")
    url, poses, skipped = lines[0].strip(), [], []
    position = -1
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        position += 1
        try:
            timestamp, K, w2c = parse_pose_line(line)
        except ValueError as error:
            skipped.append(Skip(f"{path.stem}/line {number}", str(error)))
            continue
        poses.append(PoseLine(timestamp, position, K, w2c))
    return url, poses, skipped


def pixel_intrinsics(K_normalized: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised RealEstate10K intrinsics -> pixel K for an H x W image (via cameras.py)."""
    import torch

    from cameo_cli import cameras

    K = torch.from_numpy(np.asarray(K_normalized, dtype=np.float64))
    return cameras.normalized_to_pixel_intrinsics(K, height, width).numpy()


# --------------------------------------------------------------------------- videos


def extract_video_frames(video: Path, timestamps_us: list[int]) -> dict[int, np.ndarray | str]:
    """Decode the frame nearest each timestamp (counted from the video stream's
    ``start_time``, as a player shows it): {timestamp: uint8 [H,W,3] or the problem}."""
    import av

    wanted = sorted(set(timestamps_us))
    found: dict[int, np.ndarray | str] = {}
    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 30)
            tolerance_us = 1.5e6 / rate
            start_us = round(float((stream.start_time or 0) * stream.time_base) * 1e6)
            pending = list(wanted)
            while pending:
                container.seek(max(pending[0] + start_us - SEEK_MARGIN_US, 0))
                _decode_forward(container, stream, pending, found, tolerance_us, start_us)
    except (av.FFmpegError, IndexError, OSError) as exc:
        raise SkipScene(f"{video.name}: cannot decode video ({exc})") from None
    return found


def _decode_forward(
    container, stream, pending: list[int], found: dict, tolerance_us: float, start_us: int
):
    """Decode from the current position, resolving pending timestamps (after the stream's
    start, ``start_us``) in order."""
    previous = None  # (time_us, frame)
    assigned = False
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        time_us = round(float(frame.pts * stream.time_base) * 1e6) - start_us
        while pending and time_us >= pending[0]:
            target = pending.pop(0)
            best = (time_us, frame)
            if previous is not None and target - previous[0] < time_us - target:
                best = previous
            if abs(best[0] - target) <= tolerance_us:
                found[target] = best[1].to_ndarray(format="rgb24")
            else:
                found[target] = f"no video frame within {tolerance_us / 1e3:.0f} ms"
            assigned = True
        if not pending:
            return
        if assigned and pending[0] - time_us > RESEEK_US:
            return  # the caller seeks ahead
        previous = (time_us, frame)
    for target in list(pending):  # past the end of the stream
        if previous is not None and abs(previous[0] - target) <= tolerance_us:
            found[target] = previous[1].to_ndarray(format="rgb24")
        else:
            found[target] = "timestamp beyond the end of the video"
        pending.remove(target)


# --------------------------------------------------------------------------- sources


def _frames_in_folder(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


class RealEstate10KSource(SceneSource):
    """RealEstate10K from ``root`` (raw camera files + frames/videos, or pixelSplat chunks)."""

    dataset = "re10k"

    def __init__(
        self,
        root: Path,
        split: str = "train",
        videos: Path | None = None,
        geometry: str = "none",
        eval_index: Path | None = None,
    ) -> None:
        if geometry == "depth":
            raise CameoError("re10k: the release has no depth; use --geometry vggt or none")
        self.root, self.split, self.geometry = Path(root), split, geometry
        self.videos = Path(videos) if videos else None
        self.folder = self.root / split
        if not self.folder.is_dir():
            raise CameoError(f"{self.folder}: no {split!r} split folder under --root {self.root}")
        self.chunked = any(self.folder.glob("*.torch"))
        if self.videos is not None and not self.videos.is_dir():
            raise CameoError(f"{self.videos}: --videos is not a folder")
        self.eval_index = Path(eval_index) if eval_index else None
        self._eval_entries = read_eval_index(self.eval_index) if self.eval_index else None

    def options(self) -> dict:
        return {
            "root": str(self.root),
            "split": self.split,
            "videos": str(self.videos) if self.videos else None,
            "geometry": self.geometry,
            "layout": "pixelsplat" if self.chunked else "raw",
            "eval_index": str(self.eval_index) if self.eval_index else None,
        }

    def eval_views(self, scene: str, meta: dict, rng: np.random.Generator) -> dict | str:
        """With ``--eval-index`` (pixelSplat's evaluation_index_re10k.json: indices into the
        clip's pose lines), that file's views; otherwise the seeded default."""
        if self._eval_entries is None:
            return super().eval_views(scene, meta, rng)
        entry = self._eval_entries.get(scene)
        if entry is None:
            return "not in --eval-index (or listed there as null)"
        position = {p: k for k, p in enumerate(meta.get("source_index", []))}
        views = {}
        for role in ("context", "target"):
            lost = [i for i in entry[role] if i not in position]
            if lost:
                return f"{role} frame(s) {lost} of --eval-index were skipped"
            views[role] = [position[i] for i in entry[role]]
        return views

    def list_scenes(self) -> tuple[list[str], list[Skip]]:
        if self.chunked:
            return self._list_chunk_scenes()
        return sorted(p.stem for p in self.folder.glob("*.txt")), []

    def load_scene(self, scene: str) -> SceneData:
        return self._load_chunk_scene(scene) if self.chunked else self._load_raw_scene(scene)

    # raw release ---------------------------------------------------------------------------

    def _load_raw_scene(self, scene: str) -> SceneData:
        _, poses, skipped = parse_pose_file(self.folder / f"{scene}.txt")
        if not poses:
            raise SkipScene("no pose lines")
        images = self._raw_images(scene, poses, skipped)
        frames = []
        for pose in poses:
            image = images.get(pose.timestamp_us)
            if image is None:
                continue
            height, width = image.shape[:2]
            frames.append(
                FrameData(
                    name=str(pose.timestamp_us),
                    image=image,
                    intrinsics=pixel_intrinsics(pose.intrinsics_normalized, height, width),
                    world_to_camera=pose.world_to_camera,
                    source_index=pose.position,
                )
            )
        return SceneData(scene, frames, split=self.split, skipped=skipped)

    def _raw_images(
        self, scene: str, poses: list[PoseLine], skipped: list[Skip]
    ) -> dict[int, np.ndarray]:
        """Images by timestamp; frames that cannot be had are added to ``skipped``."""
        timestamps = [p.timestamp_us for p in poses]
        if self.videos is not None:
            video = next(
                (
                    self.videos / f"{scene}{s}"
                    for s in VIDEO_SUFFIXES
                    if (self.videos / f"{scene}{s}").is_file()
                ),
                None,
            )
            if video is None:
                raise SkipScene(f"no video {scene}.mp4|webm|mkv|mov in {self.videos}")
            decoded = extract_video_frames(video, timestamps)
            images = {}
            for t in timestamps:
                if isinstance(decoded[t], str):
                    skipped.append(Skip(f"{scene}/{t}", decoded[t]))
                else:
                    images[t] = decoded[t]
            return images
        folder = self.folder / scene
        if not folder.is_dir():
            raise SkipScene(f"no frame folder {folder}")
        files = _frames_in_folder(folder)
        by_time = {int(k): v for k, v in files.items() if re.fullmatch(r"\d+", k)}
        if 2 * len(set(timestamps) & set(by_time)) < len(timestamps):
            # most names are not pose timestamps: frames numbered in order (0.png, 1.png, ...),
            # usable only one-to-one
            if len(files) != len(poses):
                raise SkipScene(
                    f"{len(poses)} pose lines but {len(files)} frames, and the frame names "
                    "are not the pose timestamps"
                )
            ordered = sorted(  # numbers in numeric order, then other names by name
                files.values(),
                key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem),
            )
            by_time = dict(zip(timestamps, ordered, strict=True))
        for extra in sorted(set(by_time) - set(timestamps)):
            skipped.append(Skip(f"{scene}/{by_time[extra].name}", "frame without a pose line"))
        images = {}
        for t in timestamps:
            if t not in by_time:
                skipped.append(Skip(f"{scene}/{t}", "pose line without a frame image"))
                continue
            try:
                images[t] = decode_image(by_time[t].read_bytes(), str(by_time[t].name))
            except SkipScene as exc:
                skipped.append(Skip(f"{scene}/{t}", str(exc)))
        return images

    # pixelSplat chunks --------------------------------------------------------------------

    def _list_chunk_scenes(self) -> tuple[list[str], list[Skip]]:
        index_path = self.folder / "index.json"
        if index_path.is_file():
            index = read_json(index_path, "chunk index")
            if not isinstance(index, dict) or not all(isinstance(v, str) for v in index.values()):
                raise CameoError(f"{index_path}: expected {{clip key: chunk file name}}")
            self._chunk_of = dict(index)
        else:
            self._chunk_of = {}
            unreadable = []
            for chunk in sorted(self.folder.glob("*.torch")):
                try:
                    examples = _load_chunk(chunk)
                except SkipScene as exc:
                    unreadable.append(Skip(chunk.name, str(exc)))
                    continue
                for position, example in enumerate(examples):
                    if isinstance(example, dict) and isinstance(example.get("key"), str):
                        self._chunk_of[example["key"]] = chunk.name
                    else:
                        unreadable.append(Skip(f"{chunk.name}[{position}]", "example has no key"))
            _chunk_cache.clear()
            return sorted(self._chunk_of, key=lambda k: (self._chunk_of[k], k)), unreadable
        skipped = [
            Skip(key, f"chunk {name} listed in index.json is missing")
            for key, name in self._chunk_of.items()
            if not (self.folder / name).is_file()
        ]
        missing = {s.item for s in skipped}
        scenes = sorted(
            (k for k in self._chunk_of if k not in missing), key=lambda k: (self._chunk_of[k], k)
        )
        return scenes, skipped

    def _load_chunk_scene(self, scene: str) -> SceneData:
        if not hasattr(self, "_chunk_of"):
            self._list_chunk_scenes()
        chunk = self.folder / self._chunk_of[scene]
        examples = _load_chunk(chunk)
        example = next((e for e in examples if isinstance(e, dict) and e.get("key") == scene), None)
        if example is None:
            raise SkipScene(f"not found in {chunk.name}")
        missing = [k for k in ("timestamps", "cameras", "images") if k not in example]
        if missing:
            raise SkipScene(f"example in {chunk.name} lacks {', '.join(missing)}")
        cameras = np.asarray(example["cameras"], dtype=np.float64)
        timestamps = [int(t) for t in example["timestamps"]]
        if cameras.ndim != 2 or cameras.shape[1] != 18:
            raise SkipScene(f"cameras of shape {tuple(cameras.shape)}, expected [N, 18]")
        if not len(cameras) == len(timestamps) == len(example["images"]):
            raise SkipScene(
                f"{len(cameras)} cameras, {len(timestamps)} timestamps and "
                f"{len(example['images'])} images differ"
            )
        frames, skipped = [], []
        for position, (values, t, encoded) in enumerate(
            zip(cameras, timestamps, example["images"], strict=True)
        ):
            try:
                image = decode_image(encoded.numpy().tobytes(), f"{scene}/{t}")
            except SkipScene as exc:
                skipped.append(Skip(f"{scene}/{t}", str(exc)))
                continue
            K, w2c = camera_from_values(values)
            height, width = image.shape[:2]
            K = pixel_intrinsics(K, height, width)
            frames.append(FrameData(str(t), image, K, w2c, source_index=position))
        return SceneData(scene, frames, split=self.split, skipped=skipped)


def read_eval_index(path: Path) -> dict[str, dict | None]:
    """A pixelSplat-style index in source frame numbers: {clip: {"context": [int], "target":
    [int]} | null (a clip it leaves out)}, checked."""
    entries = read_json(path, "evaluation index")
    if not isinstance(entries, dict):
        raise CameoError(f"{path}: expected {{clip: {{context, target}} | null}}")
    for clip, entry in entries.items():
        if entry is None:
            continue
        ok = isinstance(entry, dict) and all(
            isinstance(entry.get(k), list) and all(isinstance(i, int) for i in entry[k])
            for k in ("context", "target")
        )
        if not ok:
            raise CameoError(f"{path}: entry {clip!r} needs integer lists context and target")
    return entries


_chunk_cache: dict[Path, list] = {}


def _load_chunk(path: Path) -> list[dict]:
    """A pixelSplat chunk (kept for the next scene of the same chunk; one chunk at a time)."""
    import torch

    if path not in _chunk_cache:
        _chunk_cache.clear()
        try:
            chunk = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:  # torch raises many types for corrupt/unsafe files
            raise SkipScene(
                f"{path.name}: cannot load chunk ({type(exc).__name__}: {exc})"
            ) from None
        if not isinstance(chunk, list):
            raise SkipScene(f"{path.name}: expected a list of examples, got {type(chunk).__name__}")
        _chunk_cache[path] = chunk
    return _chunk_cache[path]
