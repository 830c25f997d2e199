"""A dataset prepared in parts (`cameo prepare ... --part I/N`): which scenes a part holds.

Partition: scene ``s`` belongs to part ``h(s) mod N + 1``, ``h`` the first 8 bytes of the
sha256 of its name (big-endian), a function of the name alone (well mixed, unlike crc32),
so every machine (job array task, node, torchrun rank) computes the same partition without
talking to the others. Part ``I`` of ``N`` is an ordinary prepared folder
``OUT/part-0000I-of-0000N/`` (its own shards, plan, lock and resume), whose index.json also
records the part: ``{"index", "count", "eval_seed", "listed", "listing_sha256",
"positions"}`` (the positions of its scenes in the source's listing).

`cameo_cli.data.merge.merge_parts(OUT)` joins the parts.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cameo_cli.errors import CameoError

PART_PATTERN = re.compile(r"part-(\d{5})-of-(\d{5})")


@dataclass(frozen=True)
class Part:
    """Part ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, scene: str) -> bool:
        """Whether ``scene`` belongs to this part (by a stable hash of its name)."""
        digest = hashlib.sha256(scene.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1

    def folder(self, out: Path) -> Path:
        """This part's folder under the dataset folder ``out``."""
        return Path(out) / f"part-{self.index:05d}-of-{self.count:05d}"

    def record(self, listed: list[str], kept: list[str], eval_seed: int) -> dict:
        """What index.json records of the part: the listing it was cut from (its length and
        digest) and where its kept scenes stand in it."""
        position = {scene: i for i, scene in enumerate(listed)}
        return {
            "index": self.index,
            "count": self.count,
            "eval_seed": eval_seed,
            "listed": len(listed),
            "listing_sha256": hashlib.sha256("\n".join(listed).encode()).hexdigest(),
            "positions": [position[scene] for scene in kept],
        }


def parse_part(text: str) -> Part:
    """``"I/N"`` (1 <= I <= N) -> Part; anything else is a CameoError."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise CameoError(f"--part {text!r}: expected I/N, e.g. 1/4 (part I of N, counted from 1)")
    index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count:
        raise CameoError(f"--part {text}: need 1 <= I <= N (parts are counted from 1)")
    if count > 99999:
        raise CameoError(f"--part {text}: at most 99999 parts")
    return Part(index, count)


def part_from_environment(environ: Mapping[str, str] = os.environ) -> Part | None:
    """The part of this process under ``torchrun`` / ``accelerate launch`` (RANK + 1 of
    WORLD_SIZE), or None in a single process."""
    world = environ.get("WORLD_SIZE")
    if world is None or int(world) <= 1:
        return None
    return Part(int(environ["RANK"]) + 1, int(world))
