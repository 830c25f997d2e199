"""Time `correspondence_targets` per sample (both target selections): F = 4 views, 32 x 32
token grid, one CPU thread.

Goal: <= 20 ms per sample. Prints the batched cost per sample and, for comparison, a plain
`torch.cdist` nearest-neighbour pass per ordered pair measured in the same run.
"""

from __future__ import annotations

import time
from functools import partial

import torch

from cameo_cli.geometry import correspondence_targets
from cameo_cli.geometry.correspondence import TARGET_SELECTIONS

VIEWS, GRID, BATCH, REPEATS = 4, (32, 32), 6, 15


def per_pair_cdist(tokens: torch.Tensor) -> torch.Tensor:
    """Reference cost: one cdist + argmin per ordered pair (no cycle mask)."""
    views = tokens.shape[1]
    return torch.stack(
        [
            torch.cdist(tokens[:, i], tokens[:, j]).argmin(-1)
            for i in range(views)
            for j in range(views)
            if i != j
        ]
    )


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000.0


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(BATCH, VIEWS, GRID[0] * GRID[1], 3, generator=generator)
    ref_ms = best_ms(lambda: per_pair_cdist(tokens), REPEATS) / BATCH
    print(f"F={VIEWS}, token grid {GRID[0]}x{GRID[1]}, batch {BATCH}, 1 thread, best of {REPEATS}")
    print(f"  per-pair torch.cdist + argmin alone (reference): {ref_ms:.2f} ms/sample")
    for resolution in (GRID[0], 512):
        point_map = torch.randn(BATCH, VIEWS, 3, resolution, resolution, generator=generator)
        valid = torch.rand(BATCH, VIEWS, resolution, resolution, generator=generator) > 0.001
        for selection in TARGET_SELECTIONS:
            run = partial(correspondence_targets, point_map, valid, GRID, selection=selection)
            ms = best_ms(run, REPEATS) / BATCH
            print(
                f"  correspondence_targets ({selection}), {resolution}px point maps: "
                f"{ms:.2f} ms/sample (goal <= 20 ms; {ms / ref_ms:.2f}x the reference)"
            )


if __name__ == "__main__":
    main()
