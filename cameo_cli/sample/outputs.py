"""Writing results: an output folder that appears whole or not at all, PNGs, a contact
sheet and a trajectory video (MP4 through PyAV, GIF through Pillow)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cameo_cli.errors import CameoError

# Small renders are enlarged (nearest neighbour) to at least this many pixels a side in the
# contact sheet and the video, so a 32 px model's output can be looked at.
DISPLAY_SIZE = 256


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise CameoError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CameoError(f"{out}: folder is not empty (pass --overwrite to replace it)")


@contextmanager
def staged_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder next to `out`; on success it replaces `out` in one
    rename, on any error it is deleted and `out` is left as it was."""
    check_output_folder(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; give it a normal folder's mode
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, retired / out.name)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out)


def write_json(path: Path, payload: Any) -> None:
    """JSON written atomically (temp file + os.replace)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(temporary, path)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> uint8 [H, W, 3]."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return array.permute(1, 2, 0).cpu().numpy()


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write a [3, H, W] image in [0, 1] as PNG, atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    Image.fromarray(to_uint8(image)).save(temporary, format="PNG")
    os.replace(temporary, path)


def _display(image: torch.Tensor) -> Image.Image:
    picture = Image.fromarray(to_uint8(image))
    factor = max(1, -(-DISPLAY_SIZE // min(picture.size)))
    if factor > 1:
        picture = picture.resize(
            (picture.width * factor, picture.height * factor), Image.Resampling.NEAREST
        )
    return picture


def contact_sheet(
    references: torch.Tensor, targets: torch.Tensor, columns: int = 8, gap: int = 4
) -> Image.Image:
    """One row of references, then the targets in rows of `columns`, on a white sheet."""
    ref_tiles = [_display(image) for image in references]
    target_tiles = [_display(image) for image in targets]
    width, height = ref_tiles[0].size
    columns = max(1, min(columns, max(len(ref_tiles), len(target_tiles))))
    rows = [ref_tiles] + [
        target_tiles[i : i + columns] for i in range(0, len(target_tiles), columns)
    ]
    sheet = Image.new(
        "RGB",
        (columns * (width + gap) + gap, len(rows) * (height + gap) + 3 * gap),
        (255, 255, 255),
    )
    top = gap
    for index, row in enumerate(rows):
        for column, tile in enumerate(row[:columns]):
            sheet.paste(tile, (gap + column * (width + gap), top))
        top += height + gap + (2 * gap if index == 0 else 0)  # wider gap after references
    return sheet


def write_video(frames: Sequence[torch.Tensor], path: Path, fps: int = 8) -> None:
    """A video of [3, H, W] frames in [0, 1]: `.mp4` (H.264 or MPEG-4 via PyAV) or `.gif`."""
    pictures = [_display(frame) for frame in frames]
    temporary = path.with_name(f".{path.name}.tmp{path.suffix}")
    if path.suffix == ".gif":
        pictures[0].save(
            temporary,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=round(1000 / fps),
            loop=0,
        )
    else:
        _write_mp4(pictures, temporary, fps)
    os.replace(temporary, path)


def _write_mp4(pictures: Sequence[Image.Image], path: Path, fps: int) -> None:
    import av

    width, height = (size + size % 2 for size in pictures[0].size)  # yuv420p: even sizes
    with av.open(str(path), mode="w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for picture in pictures:
            if picture.size != (width, height):
                padded = Image.new("RGB", (width, height))
                padded.paste(picture)
                picture = padded
            for packet in stream.encode(av.VideoFrame.from_image(picture)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
