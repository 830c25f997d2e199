"""Geometry storage: bytes per frame before (format 1: float32 at the image size) and after
(format 2: float16 depth at image / `--depth-divisor`), and whether the paper-grid targets
change (synthetic scenes at 512 px, 32 x 32 tokens per view, both target selections).

    python benchmarks/geometry_storage.py [--scenes 2] [--frames 8] [--resolution 512]
        [--divisors 1,2,4]

Prints the stored geometry bytes per frame measured in the written shards, the format-1
sizes for the same frames (float32 depth, and the float32 point maps `--geometry vggt` used to
store), and the share of rows whose target (mask and key) is identical to the one computed
from the rendered float32 point maps at full resolution.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from safetensors import safe_open

from cameo_cli.data.dataset import MultiViewDataset
from cameo_cli.data.shards import load_index, prepare_dataset
from cameo_cli.data.synthetic import SyntheticSource, render_scene
from cameo_cli.geometry import correspondence_targets

GRID = (32, 32)  # the paper's token grid at 512 px (layer 10 of the U-Nets)


def geometry_bytes_per_frame(root: Path) -> float:
    index = load_index(root)
    total, frames = 0, 0
    for shard in index["shards"]:
        with safe_open(str(root / shard["file"]), framework="numpy") as f:
            for scene in shard["scenes"]:
                total += f.get_tensor(f"{scene}/depth_fp16").nbytes
                frames += index["scenes"][scene]["num_frames"]
    return total / frames


def agreement(root: Path, source: SyntheticSource, views: list[list[int]]) -> dict[str, float]:
    dataset = MultiViewDataset(root, num_views=len(views[0]))
    same = {selection: [0, 0] for selection in ("per_pair", "joint")}
    for scene in dataset.scenes:
        render = render_scene(
            source.seed, int(scene.split("-")[1]), source.resolution, source.frames
        )
        for frames in views:
            item = dataset.get_views(scene, frames, num_refs=1)
            full = torch.from_numpy(render.point_map[frames]).double().permute(0, 3, 1, 2)
            for selection, count in same.items():
                ours = correspondence_targets(
                    item["point_map"][None], item["point_valid"][None], GRID, selection=selection
                )
                truth = correspondence_targets(full[None], None, GRID, selection=selection)
                agree = (ours.mask == truth.mask) & (~truth.mask | (ours.index == truth.index))
                count[0] += int(agree.sum())
                count[1] += agree.numel()
    return {selection: hits / total for selection, (hits, total) in same.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--divisors", default="1,2,4")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = SyntheticSource(scenes=args.scenes, resolution=args.resolution, frames=args.frames)
    pixels = args.resolution**2
    views = [list(range(0, args.frames, 2))[:4], list(range(1, args.frames, 2))[:4]]
    print(f"{args.scenes} synthetic scenes x {args.frames} frames at {args.resolution} px")
    print(f"  format 1, float32 depth:       {4 * pixels:>10,.0f} bytes/frame")
    print(f"  format 1, float32 point map:   {12 * pixels:>10,.0f} bytes/frame (--geometry vggt)")
    for divisor in (int(d) for d in args.divisors.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder) / "ds"
            prepare_dataset(source, root, depth_divisor=divisor, console=Console(quiet=True))
            after = geometry_bytes_per_frame(root)
            share = agreement(root, source, views)
        print(
            f"  format 2, float16 depth / {divisor}:  {after:>10,.0f} bytes/frame "
            f"({4 * pixels / after:.0f}x / {12 * pixels / after:.0f}x smaller); "
            f"{GRID[0]}x{GRID[1]} targets identical to full-resolution float32: "
            + ", ".join(f"{100 * v:.2f} % ({k})" for k, v in share.items())
        )


if __name__ == "__main__":
    main()
