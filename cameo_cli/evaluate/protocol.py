"""How `cameo evaluate` reads an index and at what size it scores: the choices that make its
numbers comparable (or not) with published ones.

- Index frames: ``prepared`` = positions in the prepared scene (``eval_index.json``),
  ``source`` = the source's frame numbers (pixelSplat's ``evaluation_index_re10k.json``, what
  ``cameo prepare --eval-index`` reads), translated through the scene's ``source_index``.
- Targets equal to a context frame (pixelSplat's index has 583 of 19,422): counted and
  reported; optionally excluded.
- Scoring size: ``recipe`` = the recipe's resolution (bicubic resize of the shorter side and
  square centre crop, what the model samples); ``pixelsplat`` = 256 x 256 as pixelSplat and
  MVSplat score (``src/dataset/shims/crop_shim.py``: PIL LANCZOS on uint8 to cover 256 x 256,
  then a centre crop), the truth taken from the stored frame and the sample resized the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cameo_cli.errors import CameoError

INDEX_FRAMES = ("prepared", "source")
SCORE_SIZES = ("recipe", "pixelsplat")
PIXELSPLAT_SIZE = 256


def read_index(path: Path, frames: str | None) -> dict[str, dict[str, list[int]]]:
    """The index at ``path``: for ``source`` frames pixelSplat's file as it is (clips listed
    as null left out, as ``prepare --eval-index`` reads it), else `load_eval_index`'s."""
    from cameo_cli.data.dataset import load_eval_index
    from cameo_cli.data.re10k import read_eval_index

    if frames != "source":
        return load_eval_index(path)
    index = {scene: entry for scene, entry in read_eval_index(path).items() if entry is not None}
    empty = [scene for scene, entry in index.items() if not entry["context"] or not entry["target"]]
    if empty:
        raise CameoError(f"{path}: scene {empty[0]!r} has an empty context or target list")
    return index


def index_in_positions(
    index: dict, frames: str | None, scenes: dict, path: Path
) -> dict[str, dict[str, list[int]]]:
    """``index`` in positions of the prepared scenes (``scenes``: index.json's). ``frames``
    None: refused when a scene's positions and source frame numbers differ (prepare dropped
    frames), since the file does not say which it holds."""
    if frames not in (None, *INDEX_FRAMES):
        raise CameoError(f"--index-frames must be prepared or source, got {frames!r}")
    if frames == "prepared":
        return index
    translated = {}
    for scene, entry in index.items():
        meta = scenes.get(scene)
        if meta is None:
            translated[scene] = entry  # reported by the caller's scene check
            continue
        source = meta.get("source_index")
        if frames is None:
            if source is not None and source != list(range(meta["num_frames"])):
                raise CameoError(
                    f"{path}: scene {scene!r} lost frames in `cameo prepare`, so its positions "
                    "and source frame numbers differ; say which this file holds with "
                    "--index-frames source (frame numbers, as pixelSplat's index) or prepared "
                    "(positions, as eval_index.json)"
                )
            translated[scene] = entry
            continue
        if source is None:
            raise CameoError(
                f"{path}: scene {scene!r} records no source frame numbers (prepared by an "
                "older cameo); use --index-frames prepared"
            )
        position = {frame: k for k, frame in enumerate(source)}
        lost = [f for f in entry["context"] + entry["target"] if f not in position]
        if lost:
            raise CameoError(
                f"{path}: scene {scene!r}: source frames {lost} were not kept by `cameo prepare` "
                "(see 'skipped' in index.json)"
            )
        roles = ("context", "target")
        translated[scene] = {role: [position[f] for f in entry[role]] for role in roles}
    return translated


def context_targets(index: dict) -> dict[str, list[int]]:
    """Per scene, its targets that are also one of its context frames (non-empty only)."""
    found = {s: [t for t in e["target"] if t in e["context"]] for s, e in index.items()}
    return {scene: targets for scene, targets in found.items() if targets}


def without_context_targets(index: dict) -> dict:
    """``index`` with those targets removed, and scenes left with no target dropped."""
    kept = {}
    for scene, entry in index.items():
        targets = [t for t in entry["target"] if t not in entry["context"]]
        if targets:
            kept[scene] = {"context": entry["context"], "target": targets}
    return kept


def pixelsplat_resize(images: np.ndarray, resample: int) -> np.ndarray:
    """uint8 [N, H, W(, 3)] -> [N, 256, 256(, 3)]: scaled (PIL ``resample``) to cover 256 x 256
    (rounded sizes), then centre-cropped, as pixelSplat's ``rescale_and_crop``."""
    height, width = images.shape[1:3]
    scale = max(PIXELSPLAT_SIZE / height, PIXELSPLAT_SIZE / width)
    scaled_h, scaled_w = round(height * scale), round(width * scale)
    top, left = (scaled_h - PIXELSPLAT_SIZE) // 2, (scaled_w - PIXELSPLAT_SIZE) // 2
    out = []
    for image in images:
        resized = np.asarray(Image.fromarray(image).resize((scaled_w, scaled_h), resample))
        out.append(resized[top : top + PIXELSPLAT_SIZE, left : left + PIXELSPLAT_SIZE])
    return np.stack(out)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255


def pixelsplat_sample(generated: torch.Tensor) -> torch.Tensor:
    """A sample [N,3,h,w] in [0,1] at 256 x 256 as pixelSplat scores it: resized when it is
    not that size (through uint8, as pixelSplat turns images to uint8 before LANCZOS)."""
    if tuple(generated.shape[-2:]) == (PIXELSPLAT_SIZE, PIXELSPLAT_SIZE):
        return generated
    as_bytes = (generated * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return _as_tensor(pixelsplat_resize(as_bytes, Image.Resampling.LANCZOS))


def pixelsplat_views(
    generated: torch.Tensor, stored: list[np.ndarray], masks: list[np.ndarray] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Sample [N,3,h,w] in [0,1], stored truth frames (uint8 [H,W,3]) and masks at 256 x 256:
    the truth and masks from the stored frames, the sample through `pixelsplat_sample`."""
    truth = _as_tensor(pixelsplat_resize(np.stack(stored), Image.Resampling.LANCZOS))
    mask = None
    if masks is not None:
        as_bytes = np.stack(masks).astype(np.uint8) * 255
        mask = torch.from_numpy(pixelsplat_resize(as_bytes, Image.Resampling.NEAREST) > 127)
    return pixelsplat_sample(generated), truth, mask
