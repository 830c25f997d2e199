"""Pictures of results: a contact sheet and a trajectory video (MP4 through PyAV, GIF
through Pillow); files are written atomically through `cameo_cli.files`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from cameo_cli import files

# Small renders are enlarged (nearest neighbour) to at least this many pixels a side in the
# contact sheet and the video, so a 32 px model's output can be looked at.
DISPLAY_SIZE = 256


def _display(image: torch.Tensor) -> Image.Image:
    picture = Image.fromarray(files.to_uint8(image))
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
    if path.suffix == ".gif":
        files.save_with(
            path,
            lambda temporary: pictures[0].save(
                temporary,
                format="GIF",
                save_all=True,
                append_images=pictures[1:],
                duration=round(1000 / fps),
                loop=0,
            ),
        )
    else:
        files.save_with(path, lambda temporary: _write_mp4(pictures, temporary, fps))


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
