"""DTU readers: the MVSNet layout (``*_cam.txt``) and the pixelNeRF/RegNeRF layout (cameras.npz).

MVSNet layout, per scan or shared::

    <root>/scan8/cams/00000025_cam.txt + <root>/scan8/images/00000025.jpg|png
    <root>/Cameras/00000025_cam.txt    + <root>/Rectified/scan8[_train]/rect_026_3_r5000.png

A cam file holds ``extrinsic`` (4x4 world-to-camera), ``intrinsic`` (3x3 pixels) and
``depth_min depth_interval``. ``Cameras/*_cam.txt`` and ``cams/`` describe the 1600x1200
originals; ``Rectified/scanN_train`` (640x512) was halved and centre-cropped, so its cameras
are ``Cameras/train/*_cam.txt`` (intrinsics for 160x128, fx = 2892.33 / 8, x4 at 640x512).
A camera is rescaled to an image of the same aspect ratio; one of another aspect is refused.
Optional depth maps (PFM): ``<scan>/depths/00000025.pfm`` or ``Depths/scan8[_train]/
depth_map_0025.pfm``, at the image size or an integer fraction of it.

pixelNeRF/RegNeRF layout::

    <root>/scan8/image/000025.png + <root>/scan8/cameras.npz (world_mat_25, scale_mat_25)

``world_mat_i`` is the 3x4 (or 4x4) projection P = K [R | t]; cameo decomposes ``P @
scale_mat_i`` (the normalised world of IDR/pixelNeRF) with an RQ decomposition into K, R, t.

DTU's world is in millimetres; a normalised world unit is ``scale_mat``'s scale in mm. The
scene's unit in metres is recorded (``metres_per_unit`` in index.json) for metric precision.

Object masks, where present: ``<scan>/mask/025.png`` or ``<root>/idrmasks/scan8[/mask]/025.png``.
Only the RegNeRF protocol reads them, and only its targets need one: a view it does not score
gets a full mask (RegNeRF's masks of the non-IDR scans cover the test views only).

Protocols (`PROTOCOLS`, ``cameo prepare dtu --protocol``), view numbers 0-48 as in the cam files:
``regnerf`` inputs 25, 22, 28, its 25 test views, masked metrics; ``pixelnerf`` the same
inputs, 31 targets (every view but the inputs and 15 badly exposed ones); ``mvsplat`` the
cross-dataset protocol of MVSplat's ``assets/evaluation_index_dtu_nctx2.json``: scan1 and
the 15 test scans, context 33, 31, targets 32, 24, 23, 44.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cameo_cli.data import records
from cameo_cli.data.records import FrameData, SceneData, SceneSource, Skip, SkipScene, decode_image

TEST_SCANS = (8, 21, 30, 31, 34, 38, 40, 41, 45, 55, 63, 82, 103, 110, 114)
INPUT_VIEWS = (25, 22, 28)
# RegNeRF's split: its training views (the inputs among them) are never scored
TRAIN_VIEWS = (25, 22, 28, 40, 44, 48, 0, 8, 13)
# pixelNeRF's ban_views (wrong exposure), left out by pixelNeRF and RegNeRF alike
EXCLUDED_VIEWS = (3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39)
TEST_VIEWS = tuple(v for v in range(49) if v not in TRAIN_VIEWS + EXCLUDED_VIEWS)
ORIGINAL_SIZE = (1200, 1600)  # H, W of the DTU images Cameras/*_cam.txt and cams/ describe
TRAIN_CAMERA_SIZE = (128, 160)  # H, W that Cameras/train/*_cam.txt describe
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LIGHTS = (3, 0, 1, 2, 4, 5, 6)  # Rectified/ lighting index, preferred first
MM = 0.001  # DTU's world unit (millimetres) in metres


@dataclass(frozen=True)
class DTUProtocol:
    """A published evaluation protocol: scans, input views, target views, masked metrics."""

    scans: tuple[int, ...]
    inputs: tuple[int, ...]
    targets: tuple[int, ...]
    masked: bool


PROTOCOLS = {
    "regnerf": DTUProtocol(TEST_SCANS, INPUT_VIEWS, TEST_VIEWS, masked=True),
    "pixelnerf": DTUProtocol(
        TEST_SCANS,
        INPUT_VIEWS,
        tuple(v for v in range(49) if v not in INPUT_VIEWS + EXCLUDED_VIEWS),
        masked=False,
    ),
    "mvsplat": DTUProtocol((1, *TEST_SCANS), (33, 31), (32, 24, 23, 44), masked=False),
}


def parse_cam_file(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    """An MVSNet ``*_cam.txt``: (w2c [4,4], K [3,3] px, (depth_min, depth_interval) or None)."""
    try:
        words = path.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise SkipScene(f"cannot read {path.name} ({exc})") from None
    try:
        e, i = words.index("extrinsic"), words.index("intrinsic")
        w2c = np.array([float(x) for x in words[e + 1 : e + 17]]).reshape(4, 4)
        K = np.array([float(x) for x in words[i + 1 : i + 10]]).reshape(3, 3)
        rest = [float(x) for x in words[i + 10 : i + 12]]
    except ValueError as exc:
        raise SkipScene(f"{path.name}: malformed camera file ({exc})") from None
    return w2c, K, (rest[0], rest[1]) if len(rest) == 2 else None


def rq3(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RQ decomposition of a 3x3 matrix: upper-triangular R (positive diagonal) @ orthogonal Q."""
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ matrix).T)
    upper, ortho = flip @ r.T @ flip, flip @ q.T
    signs = np.diag(np.sign(np.diag(upper)))
    return upper @ signs, signs @ ortho


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P [3,4] (any scale) = s K [R | t] -> (K [3,3] with K[2,2] = 1, w2c [4,4] with det R = 1)."""
    P = np.asarray(P, dtype=np.float64)[:3]
    if np.linalg.det(P[:, :3]) < 0:
        P = -P  # the same projection; makes R a rotation, not a reflection
    K, R = rq3(P[:, :3])
    t = np.linalg.solve(K, P[:, 3])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, t
    return K / K[2, 2], w2c


def read_pfm(path: Path) -> np.ndarray:
    """A single-channel PFM image as float32 [H, W] (top row first)."""
    with open(path, "rb") as f:
        header = f.readline().strip()
        if header not in (b"Pf", b"PF"):
            raise SkipScene(f"{path.name}: not a PFM file")
        match = re.fullmatch(rb"(\d+)\s+(\d+)", f.readline().strip())
        if match is None:
            raise SkipScene(f"{path.name}: bad PFM size line")
        width, height = int(match[1]), int(match[2])
        scale = float(f.readline().strip())
        channels = 3 if header == b"PF" else 1
        data = np.frombuffer(f.read(), dtype="<f4" if scale < 0 else ">f4")
    if data.size != width * height * channels:
        raise SkipScene(f"{path.name}: truncated PFM ({data.size} of {width * height} values)")
    image = data.reshape(height, width, channels)[::-1, :, 0]
    return np.ascontiguousarray(image, dtype=np.float32)


def _fit_intrinsics(
    K: np.ndarray, height: int, width: int, described: tuple[int, int] | None
) -> np.ndarray | None:
    """K for an H x W image: as is when its principal point is the image's centre, else
    rescaled from the ``described`` (H, W) when the aspect ratios agree; None if neither."""
    implied_w, implied_h = 2 * K[0, 2], 2 * K[1, 2]
    if 0.75 < implied_w / width < 1.33 and 0.75 < implied_h / height < 1.33:
        return K
    if described is None:
        return None
    sy, sx = height / described[0], width / described[1]
    if abs(sx / sy - 1) > 1e-3:
        return None
    return K * np.array([[sx], [sy], [1.0]])


def _fit_camera(
    cameras: list[tuple[np.ndarray, np.ndarray, tuple[int, int] | None]], height: int, width: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(K, w2c) of the first camera (K, w2c, the (H, W) its K describes) that fits H x W."""
    for K, w2c, described in cameras:
        fitted = _fit_intrinsics(K, height, width, described)
        if fitted is not None:
            return fitted, w2c
    return None


def _first_file(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _scan_number(name: str) -> int | None:
    match = re.fullmatch(r"scan(\d+)(_train)?", name)
    return int(match[1]) if match else None


class DTUSource(SceneSource):
    """DTU scans in the MVSNet or pixelNeRF layout; ``split`` test = the protocol's scans."""

    dataset = "dtu"

    def __init__(
        self, root: Path, split: str = "test", geometry: str = "none", protocol: str = "regnerf"
    ) -> None:
        self.root = Path(root)
        self.split = records.check_option("dtu", "split", split, ("test", "train", "all"))
        self.geometry = records.check_option("dtu", "geometry", geometry, ("depth", "vggt", "none"))
        self.protocol_name = records.check_option("dtu", "protocol", protocol, tuple(PROTOCOLS))
        self.protocol = PROTOCOLS[protocol]

    def options(self) -> dict:
        return {
            "root": str(self.root),
            "split": self.split,
            "geometry": self.geometry,
            "protocol": self.protocol_name,
        }

    def _scan_folders(self) -> dict[int, Path]:
        """scan number -> folder holding its images (per-scan layouts or Rectified/)."""
        folders: dict[int, Path] = {}
        for parent in (self.root, self.root / "Rectified"):
            if not parent.is_dir():
                continue
            for path in sorted(parent.iterdir()):
                number = _scan_number(path.name)
                if number is not None and path.is_dir():
                    folders.setdefault(number, path)
        return folders

    def list_scenes(self) -> tuple[list[str], list[Skip]]:
        found = self._scan_folders()
        test_scans = self.protocol.scans
        if self.split == "test":
            numbers = list(test_scans)
        else:
            numbers = [n for n in sorted(found) if self.split == "all" or n not in test_scans]
        skipped = []
        if self.split == "test":
            skipped = [
                Skip(f"scan{n}", "test scan not found under --root")
                for n in numbers
                if n not in found
            ]
        return [f"scan{n}" for n in numbers if n in found], skipped

    def eval_views(self, scene: str, meta: dict, rng: np.random.Generator) -> dict | str:
        """The protocol's input views and those of its targets the scan holds."""
        position = {int(name): k for k, name in enumerate(meta["frames"])}
        missing = [v for v in self.protocol.inputs if v not in position]
        if missing:
            return f"input view(s) {missing} missing"
        return {
            "context": [position[v] for v in self.protocol.inputs],
            "target": [position[v] for v in self.protocol.targets if v in position],
        }

    def load_scene(self, scene: str) -> SceneData:
        number = int(scene[4:])
        folder = self._scan_folders()[number]
        if (folder / "cameras.npz").is_file():
            views, metres_per_unit = self._pixelnerf_views(folder)
        else:
            views, metres_per_unit = self._mvsnet_views(folder), MM

        frames, skipped = [], []
        masks = self._mask_folder(folder, number) if self.protocol.masked else None
        for view, image_path, cams, depth_path in views:
            where = f"{scene}/{view}"
            try:
                image = decode_image(image_path.read_bytes(), image_path.name)
            except SkipScene as exc:
                skipped.append(Skip(where, str(exc)))
                continue
            height, width = image.shape[:2]
            camera = _fit_camera(cams, height, width)
            if camera is None:
                skipped.append(Skip(where, f"intrinsics do not fit a {width}x{height} image"))
                continue
            frame = FrameData(str(view), image, *camera, source_index=view)
            try:
                if self.geometry == "depth":
                    frame.depth = self._depth(depth_path, height, width)
                if masks is not None:
                    scored = view in self.protocol.targets
                    frame.mask = self._mask(masks, view, height, width, scored)
            except SkipScene as exc:
                skipped.append(Skip(where, str(exc)))
                continue
            frames.append(frame)
        return SceneData(
            scene, frames, split=self.split, skipped=skipped, metres_per_unit=metres_per_unit
        )

    # layouts -------------------------------------------------------------------------------

    def _mvsnet_views(self, folder: Path) -> list[tuple]:
        per_scan = folder / "cams"
        shared = self.root / "Cameras"
        if not per_scan.is_dir() and not shared.is_dir():
            raise SkipScene(f"no cams/ in {folder} and no {shared}")
        views = []
        for view in range(49):
            name = f"{view:08d}_cam.txt"
            described = {
                per_scan / name: ORIGINAL_SIZE,
                shared / "train" / name: TRAIN_CAMERA_SIZE,
                shared / name: ORIGINAL_SIZE,
            }
            cams = [(path, size) for path, size in described.items() if path.is_file()]
            image = _first_file(
                [folder / "images" / f"{view:08d}{s}" for s in IMAGE_SUFFIXES]
                + [folder / f"rect_{view + 1:03d}_{light}_r5000.png" for light in LIGHTS]
                + [folder / f"rect_{view + 1:03d}_max.png"]
            )
            if not cams or image is None:
                continue
            scan = folder.name.removesuffix("_train")
            depth = _first_file(
                [
                    folder / "depths" / f"{view:08d}.pfm",
                    self.root / "Depths" / folder.name / f"depth_map_{view:04d}.pfm",
                    self.root / "Depths" / scan / f"depth_map_{view:04d}.pfm",
                ]
            )
            cameras = []
            for path, size in cams:
                w2c, K, _ = parse_cam_file(path)
                cameras.append((K, w2c, size))
            views.append((view, image, cameras, depth))
        if not views:
            raise SkipScene(f"no view has both a cam file and an image in {folder}")
        return views

    def _pixelnerf_views(self, folder: Path) -> tuple[list[tuple], float]:
        """The views, and the normalised world's unit in metres (DTU's millimetres times the
        scale of ``scale_mat``)."""
        try:
            with np.load(folder / "cameras.npz", allow_pickle=False) as npz:
                cams = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise SkipScene(f"cameras.npz: cannot read ({exc})") from None
        images = sorted(
            p for p in (folder / "image").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        views, scales = [], []
        for path in images:
            view = int(path.stem)
            P = cams.get(f"world_mat_{view}")
            if P is None:
                continue
            scale = cams.get(f"scale_mat_{view}", np.eye(4))
            K, w2c = decompose_projection(P[:3] @ scale)
            views.append((view, path, [(K, w2c, None)], None))
            scales.append(float(np.cbrt(np.linalg.det(np.asarray(scale)[:3, :3]))))
        if not views:
            raise SkipScene(f"no image in {folder / 'image'} has a world_mat in cameras.npz")
        if max(scales) - min(scales) > 1e-6 * max(scales):
            raise SkipScene("cameras.npz: the views' scale_mat scales differ")
        return views, MM * scales[0]

    def _mask_folder(self, folder: Path, number: int) -> Path | None:
        candidates = [
            folder / "mask",
            self.root / "idrmasks" / f"scan{number}" / "mask",
            self.root / "idrmasks" / f"scan{number}",
        ]
        return next((c for c in candidates if c.is_dir() and any(c.glob("*.png"))), None)

    @staticmethod
    def _mask(folder: Path, view: int, height: int, width: int, scored: bool) -> np.ndarray:
        """The view's object mask; a full one for a view the protocol does not score."""
        path = _first_file([folder / f"{view:03d}.png", folder / f"{view:08d}.png"])
        if path is None and not scored:
            return np.ones((height, width), dtype=bool)
        if path is None:
            raise SkipScene(f"no mask {view:03d}.png in {folder} for a target view")
        mask = decode_image(path.read_bytes(), path.name).max(-1) > 127
        if mask.shape != (height, width):
            from PIL import Image

            resized = Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
            mask = np.asarray(resized)
        return mask

    @staticmethod
    def _depth(path: Path | None, height: int, width: int) -> np.ndarray:
        if path is None:
            raise SkipScene("no depth map (--geometry depth)")
        depth = read_pfm(path)
        fy, fx = height / depth.shape[0], width / depth.shape[1]
        if fy != fx or fy != int(fy):
            raise SkipScene(f"depth map {depth.shape} does not divide the image {height}x{width}")
        k = int(fy)
        return np.repeat(np.repeat(depth, k, axis=0), k, axis=1)
