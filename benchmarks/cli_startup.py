"""Time `cameo --help` and `cameo backbones list` against a bare `python -c pass`.

Each command runs in a fresh interpreter, several times; the median is reported, and the
ratio to the bare interpreter start measured in the same run. Goal: `cameo --help` < 0.3 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

REPEATS = 7


def median_seconds(args: list[str]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    bare = median_seconds(["-c", "pass"])
    print(f"python -c pass           {bare:6.3f} s")
    for label, args in (
        ("cameo --help", ["-m", "cameo_cli", "--help"]),
        ("cameo backbones list", ["-m", "cameo_cli", "backbones", "list"]),
    ):
        seconds = median_seconds(args)
        goal = "  (goal < 0.300 s)" if label == "cameo --help" else ""
        print(f"{label:24s} {seconds:6.3f} s   {seconds / bare:5.1f}x python -c pass{goal}")


if __name__ == "__main__":
    main()
