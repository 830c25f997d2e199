"""`cameo prepare --merge OUT`: one dataset from the parts prepared under OUT.

`merge_parts(OUT)` checks that parts 1..N (`cameo_cli.data.parts`) are all there and finished
(index.json written), that they list the same scenes from the same dataset, options and
evaluation seed, and that their shards are whole; then it writes ``OUT/index.json`` (scenes
in listing order, as one process writes them; shard files stay in their part folders,
referenced by relative path, e.g. ``part-00001-of-00002/shards/shard-00000.safetensors``)
and ``OUT/eval_index.json``. Nothing is written when a check fails.
"""

from __future__ import annotations

from pathlib import Path

from cameo_cli.data.dataset import load_eval_index
from cameo_cli.data.parts import PART_PATTERN, Part
from cameo_cli.data.shards import exclusive, load_index
from cameo_cli.errors import CameoError
from cameo_cli.files import write_json

# what every part must share: (what the error calls it, key in index.json, key in its "part")
LISTING = "scene listing (the raw dataset changed between parts)"
SAME = (
    ("dataset and options", "source", None),
    ("dataset format", "format_version", None),
    ("--seed (evaluation index)", "part", "eval_seed"),
    (LISTING, "part", "listed"),
    (LISTING, "part", "listing_sha256"),
)


def _part_folders(out: Path) -> dict[Part, Path]:
    """Parts 1..N of ``out`` in order (a CameoError unless exactly those are there)."""
    found = {}
    for path in sorted(out.iterdir()):
        match = PART_PATTERN.fullmatch(path.name)
        if match and path.is_dir():
            found[Part(int(match[1]), int(match[2]))] = path
    counts = sorted({part.count for part in found})
    if not counts:
        raise CameoError(f"{out}: no part folders (part-I-of-N) to merge; prepare with --part I/N")
    if len(counts) > 1:
        raise CameoError(f"{out}: holds parts of different splits (N = {counts}); keep one N")
    missing = [
        str(Part(i, counts[0])) for i in range(1, counts[0] + 1) if Part(i, counts[0]) not in found
    ]
    if missing:
        raise CameoError(f"{out}: part {', '.join(missing)} missing; prepare it with --part")
    return found


def _read_part(part: Path, expected: Part) -> dict:
    """A finished part's index.json, its shards checked (present, full length)."""
    if not (part / "index.json").is_file():
        raise CameoError(
            f"{part}: part {expected} is not finished (no index.json); run its prepare again"
        )
    index = load_index(part)
    record = index.get("part") or {}
    if (record.get("index"), record.get("count")) != (expected.index, expected.count):
        raise CameoError(f"{part}/index.json: not the index of part {expected}")
    for shard in index["shards"]:
        path = part / shard["file"]
        if not path.is_file() or path.stat().st_size != shard["bytes"]:
            raise CameoError(f"{path}: shard of part {expected} is missing or incomplete")
    return index


def merge_parts(out: Path) -> dict:
    """Check the parts under ``out`` and write its index.json and eval_index.json; return the
    merged index."""
    out = Path(out)
    if not out.is_dir():
        raise CameoError(f"{out}: not a folder")
    if (out / "index.json").is_file() and "parts" not in load_index(out):
        raise CameoError(f"{out}: holds a dataset prepared in one process; not merging over it")
    with exclusive(out):
        folders = _part_folders(out)
        indexes = {part: _read_part(path, part) for part, path in folders.items()}
        first_part, first = next(iter(indexes.items()))
        for part, index in indexes.items():
            differs = [
                what
                for what, key, sub in SAME
                if (index[key] if sub is None else index[key][sub])
                != (first[key] if sub is None else first[key][sub])
            ]
            if differs:
                raise CameoError(
                    f"{folders[part]}/index.json: part {part} was prepared with another "
                    f"{' and '.join(dict.fromkeys(differs))} than part {first_part}; prepare it "
                    "again as the others"
                )
        entries = []  # (listing position, scene, meta)
        shards, skipped, seen = [], [], set()
        for part, index in indexes.items():
            prefix = folders[part].name
            offset = len(shards)
            shards.extend({**s, "file": f"{prefix}/{s['file']}"} for s in index["shards"])
            positions = index["part"]["positions"]
            for position, (scene, meta) in zip(positions, index["scenes"].items(), strict=True):
                entries.append((position, scene, {**meta, "shard": meta["shard"] + offset}))
            for skip in index["skipped"]:
                key = (skip["item"], skip["reason"])
                if key not in seen:  # the listing's skips are in every part
                    seen.add(key)
                    skipped.append(skip)
        entries.sort(key=lambda entry: entry[0])
        scenes = {scene: meta for _, scene, meta in entries}
        views = {}
        for folder in folders.values():
            views.update(load_eval_index(folder))
        merged = {
            **{k: v for k, v in first.items() if k not in ("part", "shards", "scenes", "skipped")},
            "parts": {"count": first_part.count, "folders": [f.name for f in folders.values()]},
            "num_scenes": len(scenes),
            "num_frames": sum(meta["num_frames"] for meta in scenes.values()),
            "shards": shards,
            "scenes": scenes,
            "skipped": skipped,
        }
        write_json(out / "index.json", merged, indent=1)
        write_json(out / "eval_index.json", {s: views[s] for s in scenes if s in views}, indent=1)
    return merged
