"""The canonical file: one `.safetensors` per embedding (`emb_params` or `clip_l`/`clip_g`), string metadata.

Readers that only need names and metadata call `read_header`, which reads the header bytes, never tensor data;
`canonical_shapes` applies `load_canonical`'s layout rules to such a header, so that the store's listing and
its loads agree on which files are embeddings. Neither needs torch, which is imported where tensors are loaded
(a second of start-up that `tokensmith list` need not pay).
"""

from __future__ import annotations

import json
import math
import os
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from embeddings.errors import EmbeddingFormatError
from embeddings.files import atomic_write_bytes, safetensors_bytes
from embeddings.value import ENCODER_KEYS, MAX_VECTORS, MAX_WIDTH, SINGLE_KEY, Embedding

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = "1"  # tokensmith.version: the version of this file layout
# what a header's `format: pt` means, for those who read it as "a .pt file"
FORMAT_PT = "safetensors' tag for torch tensors, not a .pt file"
FIRST_READ = 8192  # one read covers the 8-byte length and a typical header
MAX_HEADER_BYTES = 16 * 1024 * 1024  # safetensors' own limit is 100 MB; an embedding header is a few KB
# safetensors' dtype names and their sizes in bytes; torch reads the first six as floating point
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def package_version() -> str:
    """The installed tokensmith release ('unknown' when run from a tree that is not installed); not
    FORMAT_VERSION, which versions the file layout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokensmith")
    except PackageNotFoundError:
        return "unknown"


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


# --- reading headers only ---
def read_header(path: Path | str) -> dict:
    """The safetensors header of `path` as a dict (tensor entries, "__metadata__"), checked against the size.

    Reads only the header bytes (one read for typical files). Raises EmbeddingFormatError naming the file when
    the header is truncated, lies about its length, or describes tensors that lie outside the file.
    """
    fd = _open(path)
    try:
        return _header_of(fd, path)[0]
    finally:
        os.close(fd)


def _open(path: Path | str) -> int:
    """A read-only descriptor of `path`: what is read through it is one file, even when another process
    replaces the name meanwhile (the store's atomic writes)."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None


def _header_of(fd: int, path: Path | str) -> tuple[dict, int]:
    """The checked header of `fd`, a file just opened (see `read_header`), and the file's size."""
    size = os.fstat(fd).st_size
    head = os.read(fd, FIRST_READ)
    if len(head) < 8:
        raise EmbeddingFormatError(f"{path}: {size} bytes is too short for a safetensors file")
    (length,) = struct.unpack_from("<Q", head)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise EmbeddingFormatError(
            f"{path}: the header claims {length} bytes but the file has {size}: truncated or not a "
            "safetensors file"
        )
    raw = head[8 : 8 + length]
    if len(raw) < length:
        raw += _read_exactly(fd, 8 + len(raw), length - len(raw), path, "inside its header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EmbeddingFormatError(f"{path}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise EmbeddingFormatError(f"{path}: the safetensors header is not a JSON object")
    _check_entries(path, header, data_size=size - 8 - length)
    return header, size


def _read_exactly(fd: int, offset: int, count: int, path: Path | str, where: str) -> bytes:
    """`count` bytes of `fd` from `offset`; EmbeddingFormatError when the file ends first (cut short
    since its size was read: written in place, not by the store)."""
    os.lseek(fd, offset, os.SEEK_SET)
    parts, done = [], 0
    while done < count:
        chunk = os.read(fd, count - done)
        if not chunk:
            raise EmbeddingFormatError(f"{path}: the file ended {where}")
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def _check_entries(path: Path | str, header: dict, *, data_size: int) -> None:
    """Every tensor entry well formed and its bytes where the data is, as safetensors' own reader checks
    before it loads: so a file that passes here, headers only, is one that safetensors reads."""
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(type(v) is str for v in meta.values()):
        raise EmbeddingFormatError(f"{path}: header metadata must map strings to strings")
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            shape, (start, end) = entry["shape"], entry["data_offsets"]
            ok = entry["dtype"] in DTYPE_BYTES and all(type(d) is int and d >= 0 for d in shape)
            ok = ok and type(start) is int and type(end) is int
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise EmbeddingFormatError(f"{path}: tensor '{key}' has a malformed header entry")
        if not 0 <= start <= end <= data_size:
            raise EmbeddingFormatError(
                f"{path}: tensor '{key}' claims bytes {start}..{end} but the file has {data_size}: truncated?"
            )
        if end - start != math.prod(shape) * DTYPE_BYTES[entry["dtype"]]:
            raise EmbeddingFormatError(
                f"{path}: tensor '{key}' ({entry['dtype']}, shape {tuple(shape)}) does not fit its "
                f"{end - start} bytes: the file is corrupted"
            )
        spans.append((start, end, key))
    _check_tiling(path, sorted(spans), data_size=data_size)


def _check_tiling(path: Path | str, spans: list[tuple[int, int, str]], *, data_size: int) -> None:
    """The tensors' byte ranges, sorted, follow one another and fill the data exactly (no overlap, gap or
    trailing bytes), as safetensors requires."""
    at = 0
    for start, end, key in spans:
        if start != at:
            raise EmbeddingFormatError(
                f"{path}: tensor '{key}' starts at byte {start}, not {at}: the file is corrupted"
            )
        at = end
    if at != data_size:
        raise EmbeddingFormatError(
            f"{path}: its tensors hold {at} bytes but the file has {data_size} after the header: the file is "
            "corrupted"
        )


def is_canonical_layout(keys: set[str] | list[str]) -> bool:
    """`emb_params` alone, or one key per encoder from clip_l / clip_g / t5xxl."""
    keys = set(keys)
    if keys == {SINGLE_KEY}:
        return True
    return bool(keys) and keys <= set(ENCODER_KEYS) - {SINGLE_KEY}


# --- the canonical layout, from the header ---
def canonical_shapes(path: Path | str, header: dict) -> dict[str, tuple[int, int]]:
    """Each encoder key's (n, dim), clip_l before clip_g, from a header alone; or EmbeddingFormatError saying
    why `load_canonical` refuses the file: keys that are not the canonical layout, values that are not
    floating point, a shape that is not (n, dim) (one vector saved 1-D, (dim,), counts as (1, dim)), sizes
    past an embedding's, or keys that disagree on n.

    The store's listing (headers only) and `load_canonical` both apply it, so a listed file loads; only what
    the tensor data holds (NaN values, a sha256 that does not match) is left for `load_canonical` to find.
    {"emb_params": F32 (768,)} -> {"emb_params": (1, 768)}; {"<cat>": F32 (1, 768)} raises.
    """
    tensors = {key: entry for key, entry in header.items() if key != "__metadata__"}
    if not is_canonical_layout(tensors):
        raise EmbeddingFormatError(
            f"{path}: keys {sorted(tensors)} are not the canonical layout (emb_params, or clip_l + clip_g); "
            "use `tokensmith import` to convert other layouts"
        )
    shapes = {key: _vectors_shape(path, key, tensors[key]) for key in sorted(tensors, key=ENCODER_KEYS.index)}
    counts = {key: n for key, (n, _) in shapes.items()}
    if len(set(counts.values())) > 1:
        raise EmbeddingFormatError(
            f"{path}: encoders disagree on the vector count {counts}; every key needs the same n"
        )
    return shapes


def _vectors_shape(path: Path | str, key: str, entry: dict) -> tuple[int, int]:
    """(n, dim) of one key's header entry, with the rules Embedding applies to the loaded tensor."""
    where = f"{path}: key '{key}'"
    if entry["dtype"] not in FLOAT_DTYPES:
        raise EmbeddingFormatError(f"{where}: dtype {entry['dtype']} is not a floating-point type")
    shape = tuple(entry["shape"])
    if len(shape) == 1:  # one vector saved 1-D: A1111, the pickle and diffusers readers take it as (1, dim)
        shape = (1, *shape)
    if len(shape) != 2:
        raise EmbeddingFormatError(f"{where}: shape {shape} is {len(shape)}-D; expected (n, dim)")
    n, dim = shape
    if not (1 <= n <= MAX_VECTORS) or not (1 <= dim <= MAX_WIDTH):
        raise EmbeddingFormatError(
            f"{where}: shape {shape} is not an embedding (expected 1..{MAX_VECTORS} vectors of width "
            f"1..{MAX_WIDTH})"
        )
    return n, dim


# --- loading ---
def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the string metadata of a safetensors file, with errors that name the file (the caller
    caps the file's size first: the whole file is read)."""
    fd = _open(path)
    try:
        header, size = _header_of(fd, path)
        data = _read_exactly(fd, 0, size, path, "while it was read")
    finally:
        os.close(fd)
    return _tensors_from(data, path), dict(header.get("__metadata__", {}))


def _tensors_from(data: bytes, path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file's bytes `data` (read from `path`, which errors name)."""
    import safetensors.torch

    try:
        return safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError for every malformed file
        raise EmbeddingFormatError(f"{path}: not a readable safetensors file ({exc})") from None


def load_canonical(path: Path) -> Embedding:
    """Read a canonical file (also kohya/ComfyUI `emb_params` and SDXL `clip_l`/`clip_g` files).

    The name is the file stem. The header is checked first, by the rules the store's listing applies
    (`canonical_shapes`, which also bounds the file's size); files that carry our `sha256` are checked
    against their tensor data. Header and tensors come from one open of the file: a file another process
    replaces meanwhile (`import --force` beside a `show`) is read whole, old or new, never as half of each.
    """
    path = Path(path)
    fd = _open(path)
    try:
        header, size = _header_of(fd, path)
        canonical_shapes(path, header)  # before the tensor data is read: it is an embedding's size
        data = _read_exactly(fd, 0, size, path, "while it was read")
    finally:
        os.close(fd)
    tensors, meta = _tensors_from(data, path), dict(header.get("__metadata__", {}))
    # one vector saved 1-D, (dim,), is (1, dim), as canonical_shapes counts it
    tensors = {key: t.unsqueeze(0) if t.dim() == 1 else t for key, t in tensors.items()}
    try:
        emb = Embedding(path.stem, tensors, {**meta, "name": path.stem})
    except EmbeddingFormatError as exc:
        raise EmbeddingFormatError(f"{path}: {exc}") from None
    recorded = meta.get("sha256")
    if "tokensmith.version" in meta and recorded and recorded != emb.sha256:
        raise EmbeddingFormatError(
            f"{path}: the tensor data does not match the sha256 in its header: the file is corrupted; "
            "restore it from trash or re-import it"
        )
    return emb


# --- saving ---
def canonical_meta(emb: Embedding) -> dict[str, str]:
    """The header metadata written for `emb`: its own metadata plus the required keys, all strings."""
    meta = dict(emb.meta)
    meta.setdefault("created", now_iso())
    meta.update(
        {
            "tokensmith.version": FORMAT_VERSION,
            "format": "pt",  # FORMAT_PT: the safetensors convention (diffusers/transformers read it)
            "name": emb.name,
            "family": emb.family,
            "num_vectors": str(emb.num_vectors),
            "sha256": emb.sha256,
        }
    )
    return meta


def canonical_bytes(emb: Embedding) -> bytes:
    """The canonical file's bytes for `emb` (the store writes these too, so the layout is checked here)."""
    if not is_canonical_layout(emb.vectors):
        raise EmbeddingFormatError(
            f"embedding '{emb.name}' has keys {sorted(emb.vectors)}; the canonical file holds emb_params or "
            "clip_l + clip_g"
        )
    return safetensors_bytes(dict(emb.vectors), canonical_meta(emb))


def save_canonical(emb: Embedding, path: Path, *, overwrite: bool = True) -> Path:
    """Write `emb` as a canonical file, atomically; overwrite=False raises FileExistsError if it exists."""
    return atomic_write_bytes(Path(path), canonical_bytes(emb), overwrite=overwrite)
