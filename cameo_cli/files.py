"""File I/O shared by every job: one atomic write with the writers built on it, and one
guarded reader per format cameo reads (JSON, YAML, safetensors, images).

A write goes to a temporary file in the target's folder, is fsynced, renamed onto the target
and the folder fsynced: a reader sees the old file or the new one, never half of one. A
missing, truncated or corrupt file read here is a `CameoError` naming it, never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from cameo_cli.errors import CameoError

# A safetensors header larger than this is not one (the format's own limit is 100 MB).
_MAX_SAFETENSORS_HEADER = 100_000_000


# -- writing ------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(folder)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def replace(source: Path, target: Path) -> None:
    """Rename `source` (a file, or a folder whose files are already synced) onto `target`
    and fsync the folder holding it: the one rename every atomic write in cameo goes through."""
    os.replace(source, target)
    _fsync(Path(target).parent)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; after the block it is fsynced and
    renamed onto `path`; if the block raises it is removed and `path` is left as it was."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        temporary.chmod(0o666 & ~_umask())  # mkstemp makes it private; give it a normal mode
        _fsync(temporary)
        replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`data` as the whole of `path`, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """`text` (UTF-8) as the whole of `path`, atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload: Any, *, indent: int = 2) -> None:
    """`payload` as JSON (one trailing newline), atomically."""
    write_text(path, json.dumps(payload, indent=indent) + "\n")


def save_figure(path: str | os.PathLike, figure: Any, **options: Any) -> None:
    """A matplotlib `figure` as PNG (120 dpi; `options` go to `savefig`), atomically; the
    figure is closed after, written or not."""
    import matplotlib.pyplot as plt

    try:
        save_with(
            path, lambda temporary: figure.savefig(temporary, format="png", dpi=120, **options)
        )
    finally:
        plt.close(figure)


def write_csv(path: str | os.PathLike, rows: Iterable[Sequence[Any]]) -> None:
    """`rows` as CSV, atomically."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    write_text(path, buffer.getvalue())


def save_with(path: str | os.PathLike, save: Callable[[Path], None]) -> None:
    """Atomically write `path` through `save(temporary)` (a library's own writer:
    Pillow, matplotlib, PyAV); the writer must be told the format, the temporary's
    suffix is `.tmp`."""
    with atomic_path(path) as temporary:
        save(temporary)


def save_png(image: Any, path: str | os.PathLike) -> None:
    """A [3, H, W] tensor in [0, 1] or a uint8 [H, W, 3] array as PNG, atomically."""
    array = image if isinstance(image, np.ndarray) else to_uint8(image)
    save_with(path, lambda temporary: Image.fromarray(array).save(temporary, format="PNG"))


def to_uint8(image: Any) -> np.ndarray:
    """A [3, H, W] torch tensor in [0, 1] -> uint8 [H, W, 3]."""
    import torch

    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return array.permute(1, 2, 0).cpu().numpy()


def save_safetensors(
    tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """A flat `{name: torch tensor}` dict as safetensors, atomically."""
    from safetensors.torch import save_file

    save_with(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


_SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def save_gathered_safetensors(
    tensors: dict[str, Any],
    path: str | os.PathLike,
    *,
    write: bool,
    metadata: dict[str, str] | None = None,
) -> None:
    """A flat `{name: tensor}` dict whose tensors may be sharded over processes (DTensor) as
    one whole safetensors file, atomically. Every process calls it: the tensors are gathered
    one at a time (name order) and the process with `write` streams each into the file, so
    no process holds more than one whole tensor at once (`load_safetensors` reads it)."""
    import torch
    from torch.distributed.tensor import DTensor

    names = sorted(tensors)
    header: dict[str, Any] = {}
    offset = 0
    for name in names:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        dtype = _SAFETENSORS_DTYPES[str(tensor.dtype).removeprefix("torch.")]
        header[name] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)

    def whole_tensors() -> Iterator[Any]:
        for name in names:
            tensor = tensors[name].detach()
            tensor = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            yield tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()

    if not write:
        for _ in whole_tensors():  # take part in every gather
            pass
        return
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        for data in whole_tensors():
            handle.write(data.tobytes())


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise CameoError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CameoError(f"{out}: folder is not empty (pass --overwrite to replace it)")


def replace_folder(staged: Path, final: Path) -> None:
    """Put the finished folder `staged` in place of `final` (removed first if present)."""
    _fsync_tree(staged)
    if final.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        replace(final, retired / final.name)
        replace(staged, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        replace(staged, final)


@contextmanager
def staged_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder next to `out`; on success it replaces `out` in one
    rename, on any error it is deleted and `out` is left as it was."""
    check_output_folder(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; give it a normal mode
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_folder(staging, out)


# -- reading ------------------------------------------------------------------------------
@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn the OS errors of reading `path` into a CameoError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise CameoError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise CameoError(f"{path}: is a directory, expected a {what}") from None
    except OSError as error:
        raise CameoError(f"{path}: cannot read the {what} ({error.strerror})") from None


def read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of `path`; missing or unreadable -> CameoError naming it."""
    path = Path(path)
    with _reading(path, what):
        return path.read_bytes()


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of `path`; missing, unreadable or not text -> CameoError naming it."""
    try:
        return read_bytes(path, what).decode("utf-8")
    except UnicodeDecodeError as error:
        raise CameoError(f"{path}: {what} is not UTF-8 text ({error.reason})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file; missing, truncated or malformed -> CameoError naming it."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as error:
        raise CameoError(f"{path}: invalid JSON ({error})") from None


def read_json_lines(path: str | os.PathLike, what: str = "JSON-lines file") -> list[Any]:
    """One JSON value per non-empty line. An unparsable LAST line is dropped (a writer that
    stopped mid-line); an unparsable line elsewhere -> CameoError naming the line."""
    lines = [line for line in read_text(path, what).splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise CameoError(f"{path}:{number}: not a JSON line") from None
    return records


def read_yaml(
    path: str | os.PathLike, what: str = "YAML file", loader: type = yaml.SafeLoader
) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file with `loader` (`yaml.SafeLoader` or a subclass of it): the data and
    its composed node (for line numbers); missing or malformed -> CameoError with the line."""
    if not issubclass(loader, yaml.SafeLoader):
        raise TypeError(f"{loader.__name__} is not a yaml.SafeLoader")
    parser = loader(read_text(path, what))
    try:
        node = parser.get_single_node()
        data = parser.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        raise CameoError(f"{path}{_yaml_problem(error)}") from None
    finally:
        parser.dispose()
    return data, node


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`:LINE: malformed YAML: problem (context on line N)` for a PyYAML error."""
    mark = getattr(exc, "problem_mark", None)
    location = f":{mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark.line != getattr(mark, "line", None):
        problem += f" ({context} on line {context_mark.line + 1})"
    return f"{location}: malformed YAML: {problem}"


def check_safetensors(path: str | os.PathLike) -> dict[str, str]:
    """Check that `path` is a whole safetensors file (header parses, the file is as long as
    the header says) without reading the tensors; return its metadata. Missing, truncated
    or not safetensors -> CameoError naming the file."""
    metadata = _safetensors_header(Path(path)).get("__metadata__") or {}
    return dict(metadata) if isinstance(metadata, dict) else {}


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a whole safetensors file, read from its header only."""
    header = _safetensors_header(Path(path))
    return {
        name: tuple(int(n) for n in entry["shape"])
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The header of a whole safetensors file (checked as `check_safetensors` says)."""
    with _reading(path, "safetensors file"), open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
        if length is None or not 2 <= length <= min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise CameoError(f"{path}: not a safetensors file (or truncated in its header)")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise CameoError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CameoError(f"{path}: not a safetensors file (its header is not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shaped = isinstance(offsets, list) and isinstance(entry.get("shape"), list)
        if not (shaped and len(offsets) == 2):
            raise CameoError(f"{path}: not a safetensors file (bad entry for {name!r})")
        end = max(end, int(offsets[1]))
    if size != 8 + length + end:
        raise CameoError(
            f"{path}: truncated or corrupt safetensors file "
            f"({size} bytes, its header describes {8 + length + end})"
        )
    return header


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """All tensors of a safetensors file as torch tensors on `device`; missing, truncated or
    not safetensors -> CameoError naming the file."""
    return dict(iter_safetensors(path, device))


def iter_safetensors(path: str | os.PathLike, device: str = "cpu") -> Iterator[tuple[str, Any]]:
    """The tensors of a safetensors file one at a time, `(name, torch tensor on device)`, so
    a caller that keeps a part of each (a shard) never holds the whole file; the same checks
    and errors as `load_safetensors`."""
    from safetensors import SafetensorError, safe_open

    check_safetensors(path)
    try:
        with safe_open(str(path), "pt", device=str(device)) as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
    except (SafetensorError, OSError, ValueError) as error:
        raise CameoError(f"{path}: cannot read the safetensors file ({error})") from None


def read_npy(path: str | os.PathLike, what: str = "array") -> np.ndarray:
    """A NumPy `.npy` file (no pickled objects); missing, truncated or not .npy -> CameoError
    naming it."""
    data = read_bytes(path, what)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise CameoError(f"{path}: cannot read the .npy {what} ({error})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3]; missing or not a readable image -> CameoError."""
    path = Path(path)
    if not path.is_file():
        raise CameoError(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise CameoError(f"{path}: cannot read the image ({error})") from None
