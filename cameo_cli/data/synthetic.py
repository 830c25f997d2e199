"""Procedural multi-view scenes: textured boxes, spheres and panels in a room, ray cast in numpy.

Every scene is a function of ``(seed, index, held_out)`` only, so a dataset is reproducible
bit for bit without downloads. Training scenes (``synth-00000``, ...) draw from the generator
seeded ``[seed, index]``; held-out scenes (``synth-test-00000``, ...) from ``[seed, index,
HELD_OUT_TAG]``. NumPy's seed sequence reads a seed as its list of 32-bit words, and a third
non-zero word never reproduces a two-word seed, so for seeds and indices below 2**32 no
held-out scene of any seed is a training scene of any seed (``--seed 1``'s training set never
holds seed 0's held-out scenes).

Rendering gives exact geometry: z-depth and world-space point maps at the pixel centres,
with pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)`` (the convention of
``cameo_cli.cameras``). Colours are view independent (Lambertian shading with a fixed light),
so the same surface point has the same colour in every view.

World frame: y up, floor at y = 0. Cameras: OpenCV axes, world-to-camera 4x4, pixel K.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from cameo_cli.data.records import (
    HELD_OUT_SPLIT,
    TRAIN_SPLIT,
    FrameData,
    SceneData,
    SceneSource,
    Skip,
)
from cameo_cli.errors import CameoError

GENERATOR_VERSION = 1  # bump whenever a change alters rendered pixels
EPS = 1e-9
TEXTURES = ("checker", "stripes", "noise")
HELD_OUT_TAG = zlib.crc32(HELD_OUT_SPLIT.encode())  # third seed word of held-out scenes (non-zero)
TRAIN_PREFIX, HELD_OUT_PREFIX = "synth-", "synth-test-"


@dataclass(frozen=True)
class Texture:
    kind: str  # one of TEXTURES
    colors: np.ndarray  # [3, 3] RGB in [0, 1]
    scale: float  # texture period in world units
    angle: float  # stripe direction (radians)
    salt: int  # noise lattice hash salt


@dataclass(frozen=True)
class Primitive:
    kind: str  # "room" (inside of an axis-aligned box), "box", "sphere" or "panel"
    center: np.ndarray  # [3]
    half: np.ndarray  # [3] half extents (sphere: radius in half[0]; panel: half[2] unused)
    yaw: float  # rotation about the world y axis
    textures: tuple[Texture, ...]  # one, or six for the room (faces -x, +x, -y, +y, -z, +z)


@dataclass(frozen=True)
class SceneRender:
    """One rendered scene: N views of size H x W."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    depth: np.ndarray  # float32 [N, H, W] z-depth along the optical axis
    point_map: np.ndarray  # float32 [N, H, W, 3] world coordinates of each pixel's surface
    intrinsics: np.ndarray  # float64 [N, 3, 3] pixels
    world_to_camera: np.ndarray  # float64 [N, 4, 4] OpenCV


# --------------------------------------------------------------------------- scene layout


def _random_texture(
    rng: np.random.Generator, scale: tuple[float, float], texture_scale: float
) -> Texture:
    hues = (rng.uniform() + np.array([0.0, rng.uniform(0.25, 0.75), rng.uniform(0.1, 0.9)])) % 1
    sats = rng.uniform(0.35, 0.95, size=3)
    vals = np.array([rng.uniform(0.75, 1.0), rng.uniform(0.2, 0.5), rng.uniform(0.45, 0.9)])
    colors = np.stack([_hsv_to_rgb(h, s, v) for h, s, v in zip(hues, sats, vals, strict=True)])
    return Texture(
        kind=TEXTURES[int(rng.integers(len(TEXTURES)))],
        colors=colors,
        scale=float(rng.uniform(*scale)) * texture_scale,
        angle=float(rng.uniform(0, np.pi)),
        salt=int(rng.integers(1, 2**20)),
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def build_scene(
    rng: np.random.Generator, texture_scale: float = 1.0
) -> tuple[list[Primitive], np.ndarray, np.ndarray]:
    """A room with 3-6 objects; returns (primitives, room half extents [3], light dir [3]).
    `texture_scale` multiplies every texture's period (the layout draws stay the same)."""
    room = np.array([rng.uniform(2.6, 4.0), rng.uniform(1.4, 1.8), rng.uniform(2.6, 4.0)])
    faces = tuple(_random_texture(rng, (0.5, 1.0), texture_scale) for _ in range(6))
    prims = [Primitive("room", np.array([0.0, room[1], 0.0]), room, 0.0, faces)]
    reach = 0.28 * min(room[0], room[2])  # objects stay well inside the camera orbit
    for _ in range(int(rng.integers(3, 7))):
        kind = ("box", "sphere", "panel")[int(rng.choice(3, p=[0.45, 0.35, 0.2]))]
        x, z = rng.uniform(-reach, reach, size=2)
        yaw = float(rng.uniform(0, np.pi))
        if kind == "box":
            half = rng.uniform([0.2, 0.2, 0.2], [0.55, 0.7, 0.55])
            center = np.array([x, half[1], z])
        elif kind == "sphere":
            r = rng.uniform(0.2, 0.5)
            half = np.array([r, r, r])
            center = np.array([x, r + rng.uniform(0.0, 0.4), z])
        else:
            half = np.array([rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.7), 0.0])
            center = np.array([x, half[1] + rng.uniform(0.0, 0.3), z])
        texture = _random_texture(rng, (0.2, 0.4), texture_scale)
        prims.append(Primitive(kind, center, half, yaw, (texture,)))
    light = np.array([rng.uniform(-0.6, 0.6), 1.0, rng.uniform(-0.6, 0.6)])
    return prims, room, light / np.linalg.norm(light)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """OpenCV world-to-camera 4x4 for a camera at ``eye`` looking at ``target`` (world y up)."""
    up = np.array([0.0, 1.0, 0.0]) if up is None else up
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([right, down, forward])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return w2c


def camera_trajectory(rng: np.random.Generator, room: np.ndarray, num_frames: int) -> np.ndarray:
    """A smooth arc around the room centre looking inwards: [N, 4, 4] world-to-camera."""
    t = np.linspace(0.0, 1.0, num_frames)
    start = rng.uniform(0, 2 * np.pi)
    arc = rng.uniform(0.5, 1.1) * rng.choice([-1.0, 1.0])
    angle = start + arc * t
    radius = rng.uniform(0.75, 0.85) * (1.0 + 0.06 * np.sin(2 * np.pi * t + rng.uniform(0, 6)))
    height = rng.uniform(1.0, 1.8) + 0.15 * np.sin(np.pi * t * rng.uniform(0.5, 1.5))
    eyes = np.stack(
        [radius * room[0] * np.cos(angle), height, radius * room[2] * np.sin(angle)], axis=-1
    )
    drift = rng.uniform(-0.4, 0.4, size=(2, 3)) * np.array([1.0, 0.3, 1.0])
    targets = np.array([0.0, 0.7, 0.0]) + drift[0] + np.outer(t, drift[1] - drift[0])
    return np.stack([look_at(e, g) for e, g in zip(eyes, targets, strict=True)])


# --------------------------------------------------------------------------- ray casting


def _rotate_y(v: np.ndarray, yaw: float) -> np.ndarray:
    """Rotate world vectors [3, R] into a frame turned by ``yaw`` about y (world -> local)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([c * v[0] - s * v[2], v[1], s * v[0] + c * v[2]])


def _intersect(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance along rays o + t d ([3, R] each) to the first hit (inf if none), and the local
    hit coordinates [3, R]. Components are rows, so reductions run over 3 long rows."""
    lo = _rotate_y(o - prim.center[:, None], prim.yaw)
    ld = _rotate_y(d, prim.yaw)
    if prim.kind == "sphere":
        b = lo[0] * ld[0] + lo[1] * ld[1] + lo[2] * ld[2]
        c = lo[0] ** 2 + lo[1] ** 2 + lo[2] ** 2 - prim.half[0] ** 2
        disc = b * b - c
        root = np.sqrt(np.maximum(disc, 0.0))
        t = np.where(-b - root > EPS, -b - root, -b + root)
        t = np.where((disc >= 0) & (t > EPS), t, np.inf)
    elif prim.kind == "panel":
        t = -lo[2] / np.where(np.abs(ld[2]) < EPS, EPS, ld[2])
        inside = (np.abs(lo[0] + t * ld[0]) <= prim.half[0]) & (
            np.abs(lo[1] + t * ld[1]) <= prim.half[1]
        )
        t = np.where(inside & (t > EPS), t, np.inf)
    else:
        inv = 1.0 / np.where(np.abs(ld) < EPS, EPS, ld)
        t0 = (-prim.half[:, None] - lo) * inv
        t1 = (prim.half[:, None] - lo) * inv
        lo_t, hi_t = np.minimum(t0, t1), np.maximum(t0, t1)
        near = np.maximum(np.maximum(lo_t[0], lo_t[1]), lo_t[2])
        far = np.minimum(np.minimum(hi_t[0], hi_t[1]), hi_t[2])
        if prim.kind == "room":  # rays start inside: the exit distance
            t = np.where(far > EPS, far, np.inf)
        else:
            t = np.where((near <= far) & (near > EPS), near, np.inf)
    return t, lo + np.where(np.isfinite(t), t, 0.0) * ld


def _surface(prim: Primitive, local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texture coordinates (u, v) and the world normal at local hit points."""
    if prim.kind == "sphere":
        n_local = local / prim.half[0]
        u = np.arctan2(n_local[:, 2], n_local[:, 0]) * prim.half[0]
        v = np.arccos(np.clip(n_local[:, 1], -1, 1)) * prim.half[0]
    elif prim.kind == "panel":
        n_local = np.zeros_like(local)
        n_local[:, 2] = 1.0
        u, v = local[:, 0], local[:, 1]
    else:
        axis = np.argmax(np.abs(local) / prim.half, axis=-1)
        n_local = np.zeros_like(local)
        n_local[np.arange(len(local)), axis] = np.sign(local[np.arange(len(local)), axis])
        # the two in-face coordinates, offset by face so that faces do not look alike
        other = np.stack([(axis + 1) % 3, (axis + 2) % 3], axis=-1)
        uv = np.take_along_axis(local, other, axis=-1)
        u, v = uv[:, 0] + 3.1 * axis, uv[:, 1] + 1.7 * (n_local.sum(-1) > 0)
    c, s = np.cos(prim.yaw), np.sin(prim.yaw)  # local -> world is the inverse rotation
    normal = np.stack(
        [
            c * n_local[:, 0] + s * n_local[:, 2],
            n_local[:, 1],
            -s * n_local[:, 0] + c * n_local[:, 2],
        ],
        axis=-1,
    )
    if prim.kind == "room":
        normal = -normal  # the inside faces point into the room
    return u, v, normal


def _face(prim: Primitive, local: np.ndarray) -> np.ndarray:
    """Face index of box hits: 2 * axis + (hit on the positive side)."""
    axis = np.argmax(np.abs(local) / prim.half, axis=-1)
    return 2 * axis + (np.take_along_axis(local, axis[:, None], -1)[:, 0] > 0)


def _lattice(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic hash of integer lattice points to [0, 1)."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float64) / 65536.0


def _value_noise(u: np.ndarray, v: np.ndarray, salt: int) -> np.ndarray:
    x0, y0 = np.floor(u), np.floor(v)
    fx, fy = u - x0, v - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    n00, n10 = _lattice(x0, y0, salt), _lattice(x0 + 1, y0, salt)
    n01, n11 = _lattice(x0, y0 + 1, salt), _lattice(x0 + 1, y0 + 1, salt)
    return (n00 * (1 - fx) + n10 * fx) * (1 - fy) + (n01 * (1 - fx) + n11 * fx) * fy


def _shade_texture(tex: Texture, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    su, sv = u / tex.scale, v / tex.scale
    if tex.kind == "checker":
        w = ((np.floor(su) + np.floor(sv)) % 2)[:, None]
        accent = (_value_noise(su * 0.5, sv * 0.5, tex.salt) > 0.7)[:, None]
        base = tex.colors[0] * (1 - w) + tex.colors[1] * w
        return np.where(accent & (w > 0), tex.colors[2], base)
    if tex.kind == "stripes":
        phase = (su * np.cos(tex.angle) + sv * np.sin(tex.angle)) * 2 * np.pi
        w = np.clip(0.5 + 0.8 * np.sin(phase), 0, 1)[:, None]
        m = _value_noise(su * 0.7, sv * 0.7, tex.salt)[:, None]
        return (tex.colors[0] * (1 - w) + tex.colors[1] * w) * (0.8 + 0.2 * m)
    coarse = _value_noise(su * 2, sv * 2, tex.salt)
    n = (0.65 * coarse + 0.35 * _value_noise(su * 5, sv * 5, ~tex.salt))[:, None]
    return np.where(
        n < 0.5,
        tex.colors[0] * (1 - 2 * n) + tex.colors[1] * 2 * n,
        tex.colors[1] * (2 - 2 * n) + tex.colors[2] * (2 * n - 1),
    )


def cast(
    prims: list[Primitive],
    light: np.ndarray,
    origins: np.ndarray,
    dirs: np.ndarray,
    shade: bool = True,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Cast rays (unit directions) [R, 3]: colour [R, 3] in [0, 1] (None unless ``shade``)
    and world hit points [R, 3]."""
    o, d = np.ascontiguousarray(origins.T), np.ascontiguousarray(dirs.T)
    best = np.full(len(dirs), np.inf)
    owner = np.full(len(dirs), -1)
    locals_ = []
    for k, prim in enumerate(prims):
        t, local = _intersect(prim, o, d)
        closer = t < best
        best = np.where(closer, t, best)
        owner = np.where(closer, k, owner)
        locals_.append(local)
    points = origins + np.where(np.isfinite(best), best, 0.0)[:, None] * dirs
    if not shade:
        return None, points
    color = np.zeros((len(dirs), 3))
    for k, prim in enumerate(prims):
        sel = owner == k
        if not sel.any():
            continue
        local = locals_[k][:, sel].T
        u, v, normal = _surface(prim, local)
        lambert = np.abs(normal @ light) if prim.kind == "panel" else np.maximum(normal @ light, 0)
        albedo = np.empty((len(u), 3))
        face = _face(prim, local) if len(prim.textures) > 1 else np.zeros(len(u), int)
        for f, tex in enumerate(prim.textures):
            albedo[face == f] = _shade_texture(tex, u[face == f], v[face == f])
        color[sel] = albedo * (0.5 + 0.5 * lambert)[:, None]
    return np.clip(color, 0.0, 1.0), points


def pinhole_intrinsics(size: int, fov_deg: float) -> np.ndarray:
    f = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    return np.array([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])


def _camera_rays(
    K: np.ndarray, w2c: np.ndarray, size: int, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World rays through pixel positions (j + ox, i + oy) for each (ox, oy) in ``offsets``."""
    jj, ii = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    px = (jj[None] + offsets[:, 0, None, None]).ravel()
    py = (ii[None] + offsets[:, 1, None, None]).ravel()
    cam = np.stack([(px - K[0, 2]) / K[0, 0], (py - K[1, 2]) / K[1, 1], np.ones_like(px)], -1)
    rot = w2c[:3, :3]
    dirs = cam @ rot  # = (R^T cam^T)^T, camera -> world directions
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    eye = -rot.T @ w2c[:3, 3]
    return np.broadcast_to(eye, dirs.shape), dirs


def scene_rng(seed: int, index: int, held_out: bool = False) -> np.random.Generator:
    """The generator of training scene ``index`` (or held-out scene, a disjoint stream)."""
    return np.random.default_rng([seed, index, HELD_OUT_TAG] if held_out else [seed, index])


def render_scene(
    seed: int,
    index: int,
    resolution: int = 64,
    num_frames: int = 16,
    fov_deg: float = 60.0,
    supersample: int = 2,
    held_out: bool = False,
    texture_scale: float = 1.0,
) -> SceneRender:
    """Render training scene ``index`` (``held_out``: held-out scene ``index``) of the
    dataset seeded ``seed`` from ``num_frames`` cameras; ``texture_scale`` multiplies the
    texture periods (same layout, cameras and depth; 1 = the default textures)."""
    if not 16 <= resolution <= 1024:
        raise ValueError(f"resolution must be within 16..1024 px, got {resolution}")
    rng = scene_rng(seed, index, held_out)
    prims, room, light = build_scene(rng, texture_scale)
    w2cs = camera_trajectory(rng, room, num_frames)
    K = pinhole_intrinsics(resolution, fov_deg)
    grid = (np.arange(supersample) + 0.5) / supersample
    sub = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    images, depths, points = [], [], []
    for w2c in w2cs:
        o, d = _camera_rays(K, w2c, resolution, np.array([[0.5, 0.5]]))
        _, hit = cast(prims, light, o, d, shade=False)
        o, d = _camera_rays(K, w2c, resolution, sub)
        color, _ = cast(prims, light, o, d)
        color = color.reshape(len(sub), resolution, resolution, 3).mean(0)
        images.append(np.round(color * 255).astype(np.uint8))
        points.append(hit.reshape(resolution, resolution, 3))
        depths.append((hit @ w2c[2, :3] + w2c[2, 3]).reshape(resolution, resolution))
    return SceneRender(
        images=np.stack(images),
        depth=np.stack(depths).astype(np.float32),
        point_map=np.stack(points).astype(np.float32),
        intrinsics=np.repeat(K[None], num_frames, axis=0),
        world_to_camera=w2cs,
    )


class SyntheticSource(SceneSource):
    """``scenes`` procedural training scenes and ``test_scenes`` held-out ones (split
    ``test``, from their own random stream: see the module docstring) of ``frames`` views
    each, as a `SceneSource`. With held-out scenes the evaluation index names only them."""

    dataset = "synthetic"

    def __init__(
        self,
        scenes: int = 32,
        resolution: int = 64,
        frames: int = 16,
        seed: int = 0,
        split: str = TRAIN_SPLIT,
        geometry: str = "depth",
        test_scenes: int = 0,
        texture_scale: float = 1.0,
    ) -> None:
        if geometry not in ("depth", "none"):
            raise CameoError(
                f"synthetic: --geometry must be depth (exact) or none, got {geometry!r}"
            )
        if not 16 <= resolution <= 1024:
            raise CameoError(f"synthetic: --resolution must be within 16..1024, got {resolution}")
        if not texture_scale > 0:
            raise CameoError(f"synthetic: --texture-scale must be positive, got {texture_scale}")
        if frames < 2 or scenes < 1 or test_scenes < 0:
            raise CameoError(
                "synthetic: need at least 1 scene, 2 frames per scene and --test-scenes >= 0"
            )
        self.scenes, self.resolution, self.frames = scenes, resolution, frames
        self.seed, self.split, self.geometry = seed, split, geometry
        self.test_scenes, self.texture_scale = test_scenes, texture_scale

    def options(self) -> dict:
        return {
            "scenes": self.scenes,
            "resolution": self.resolution,
            "frames": self.frames,
            "seed": self.seed,
            "split": self.split,
            "geometry": self.geometry,
            "generator_version": GENERATOR_VERSION,
            **({"test_scenes": self.test_scenes} if self.test_scenes else {}),
            **({"texture_scale": self.texture_scale} if self.texture_scale != 1 else {}),
        }

    def list_scenes(self) -> tuple[list[str], list[Skip]]:
        train = [f"{TRAIN_PREFIX}{i:05d}" for i in range(self.scenes)]
        return train + [f"{HELD_OUT_PREFIX}{i:05d}" for i in range(self.test_scenes)], []

    def load_scene(self, scene: str) -> SceneData:
        held_out = scene.startswith(HELD_OUT_PREFIX)
        index = int(scene.removeprefix(HELD_OUT_PREFIX if held_out else TRAIN_PREFIX))
        render = render_scene(
            self.seed,
            index,
            self.resolution,
            self.frames,
            held_out=held_out,
            texture_scale=self.texture_scale,
        )
        split = HELD_OUT_SPLIT if held_out else self.split
        return scene_data(render, scene, with_depth=self.geometry == "depth", split=split)

    def eval_views(self, scene: str, meta: dict, rng: np.random.Generator) -> dict | str | None:
        """The default views; with held-out scenes, None (not evaluated) for the others."""
        if self.test_scenes and meta["split"] != HELD_OUT_SPLIT:
            return None
        return super().eval_views(scene, meta, rng)


def scene_data(
    render: SceneRender, scene: str, *, with_depth: bool, split: str = TRAIN_SPLIT
) -> SceneData:
    """The frames of a render as a prepared scene (with its exact depth or without)."""
    frames = [
        FrameData(
            name=str(k),
            image=render.images[k],
            intrinsics=render.intrinsics[k],
            world_to_camera=render.world_to_camera[k],
            depth=render.depth[k] if with_depth else None,
            source_index=k,
        )
        for k in range(len(render.images))
    ]
    return SceneData(scene=scene, frames=frames, split=split)
