"""A1111 embeddings inside images: the `sd-ti-embedding` PNG text chunk (base64 of JSON, tensors as
{"TORCHTENSOR": lists}), and the older data hidden in the xor-masked side panels (read only, PNG or WebP).

PNG chunks are parsed here directly (not through PIL's text limits), so large embeddings read back whole;
only the `sd-ti-embedding` chunk is ever inflated, and PIL is handed the pixel chunks alone.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from embeddings.errors import EmbeddingFormatError
from embeddings.files import atomic_write
from embeddings.formats.layouts import embedding_from_dict, tensors_from_json, tensors_to_json
from embeddings.formats.pickled import a1111_dict
from embeddings.value import Embedding, family_title

CHUNK_KEY = b"sd-ti-embedding"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CHUNK_BYTES = 64 * 1024 * 1024  # far above any embedding; caps what the text we inflate may add up to
MAX_PIXELS = 64 * 1024 * 1024
# A side panel holds one nibble per pixel channel of the zlib'd JSON: a 75-vector SD 2.x embedding (A1111's
# largest) is about 0.7 MB of it, so a panel of more bytes than this holds something else.
MAX_PANEL_BYTES = 4 * 1024 * 1024
PIXEL_CHUNKS = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}  # all PIL needs for the pixels
LCG_A, LCG_C, LCG_M = 1664525, 1013904223, 2**32  # A1111's lcg() (seed 0)


# --- reading ---
def png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(kind, start, end) of each chunk of a PNG, `data[start:end]` its body, up to IEND; EmbeddingFormatError
    for a file that is not a PNG or a chunk that runs past the end."""
    if not data.startswith(PNG_SIGNATURE):
        raise EmbeddingFormatError("not a PNG file")
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if length > MAX_CHUNK_BYTES or pos + 8 + length > len(data):  # (a missing CRC after it is let go)
            raise EmbeddingFormatError("the PNG is truncated (a chunk runs past the end of the file)")
        yield kind, pos + 8, pos + 8 + length
        if kind == b"IEND":
            return
        pos += 12 + length


def png_text_chunks(data: bytes, keys: Collection[bytes] = (CHUNK_KEY,)) -> dict[bytes, bytes]:
    """keyword -> text of the tEXt/zTXt/iTXt chunks whose keyword is in `keys` (inflated), or
    EmbeddingFormatError.

    Only those chunks are inflated, together to at most MAX_CHUNK_BYTES: a 1 MB PNG can carry many zTXt
    chunks that each inflate to 60 MB, and only `sd-ti-embedding` is ever read.
    """
    chunks: dict[bytes, bytes] = {}
    budget = MAX_CHUNK_BYTES
    for kind, start, end in png_chunks(data):
        if kind not in (b"tEXt", b"zTXt", b"iTXt") or data.find(b"\0", start, end) < 0:
            continue
        key, rest = data[start:end].split(b"\0", 1)
        if key not in keys:
            continue  # never inflated
        if kind == b"tEXt":
            text = rest
        elif kind == b"zTXt":
            text = _inflate(rest[1:], budget)
        else:
            compressed, rest = rest[:1] not in (b"", b"\0"), rest[2:]  # the flag, the method (always zlib)
            _lang, _translated, text = rest.split(b"\0", 2) if rest.count(b"\0") >= 2 else (b"", b"", b"")
            text = _inflate(text, budget) if compressed else text
        budget -= len(text)
        chunks[key] = text
    return chunks


def _inflate(data: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj()
    try:
        out = decompressor.decompress(data, max(limit, 0) + 1)
    except zlib.error as exc:
        raise EmbeddingFormatError(f"a compressed PNG text chunk is corrupt ({exc})") from None
    if len(out) > limit:
        raise EmbeddingFormatError(
            f"its compressed text chunks inflate past {MAX_CHUNK_BYTES // 2**20} MB, far more than any "
            "embedding: it was not written by A1111 or tokensmith"
        )
    return out


def _pixels_only(data: bytes) -> bytes:
    """The PNG with only the chunks its pixels need: PIL then never inflates text chunks of its own (up to
    its own limits, whose error would be the last word on a file that merely carries no embedding)."""
    kept = [data[start - 8 : end + 4] for kind, start, end in png_chunks(data) if kind in PIXEL_CHUNKS]
    return PNG_SIGNATURE + b"".join(kept)


def decode_chunk(text: bytes) -> object:
    """A1111's `embedding_from_b64`: base64 -> JSON -> dict with tensors."""
    try:
        data = json.loads(base64.b64decode(text, validate=False))
    except (binascii.Error, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise EmbeddingFormatError(f"the sd-ti-embedding chunk is not base64 JSON ({exc})") from None
    return tensors_from_json(data, source="the sd-ti-embedding chunk")


def read_image(path: Path) -> Embedding:
    """An Embedding from an A1111 embedding image (PNG chunk, else the side panels of a PNG/WebP)."""
    path = Path(path)
    raw = path.read_bytes()
    data = None
    try:
        if raw.startswith(PNG_SIGNATURE):
            text = png_text_chunks(raw).get(CHUNK_KEY)
            data = decode_chunk(text) if text is not None else None
            raw = _pixels_only(raw) if data is None else raw
    except EmbeddingFormatError as exc:
        raise EmbeddingFormatError(f"{path}: {exc}") from None
    if data is None:
        data = _read_side_panels(path, io.BytesIO(raw))
    emb = embedding_from_dict(data, path=path, source_format="image")
    name = data.get("name") if isinstance(data, dict) else None
    return emb.with_name(str(name)) if isinstance(name, str) and name.strip() else emb


# --- the older side-panel data (A1111 image_embedding.py: insert_image_data_embed) ---
def _lcg_mask(count: int) -> np.ndarray:
    """A1111's lcg() stream (m=2**32, a=1664525, c=1013904223, seed 0), each value % 255, low 4 bits: (count,)

    Built by doubling, not one value at a time (a Python loop took 45 s for a large panel): k steps of
    seed -> a*seed + c are one map seed -> a_k*seed + c_k, so the stream's next k values are its first k
    mapped on by k steps.
    """
    seeds = np.array([LCG_C], dtype=np.uint64)[:count]  # the first value: one step from seed 0
    step_a, step_c = LCG_A, LCG_C  # the map for len(seeds) steps
    while seeds.size < count:  # a product of two values below 2**32 (plus one) is exact in uint64
        seeds = np.concatenate([seeds, (seeds * np.uint64(step_a) + np.uint64(step_c)) & 0xFFFFFFFF])
        step_a, step_c = step_a * step_a % LCG_M, (step_a * step_c + step_c) % LCG_M
    return (seeds[:count] % 255).astype(np.uint8) & 0x0F


def _crop_black(img: np.ndarray) -> np.ndarray:
    mask = img.min(axis=2) > 0  # (H, W): no channel black; `(img > 0).all(2)` would make an (H, W, 3) first
    cols, rows = mask.any(0), mask.any(1)
    if not cols.any():
        return img
    col_start, col_end = cols.argmax(), mask.shape[1] - cols[::-1].argmax()
    row_start, row_end = rows.argmax(), mask.shape[0] - rows[::-1].argmax()
    return img[row_start:row_end, col_start:col_end]


def _read_side_panels(path: Path, image_file: io.BytesIO) -> object:
    """The JSON that A1111 xor-masked into the panels left and right of an image's black columns. Panel
    sizes are checked before any masking: a plain large image is refused in a second, not scanned."""
    nibbles = _crop_black(_rgb_pixels(path, image_file)) & 0x0F  # (H, W, 3)
    black_cols = np.where(nibbles.sum(axis=(0, 2)) == 0)[0]
    if black_cols.shape[0] < 2:
        raise _no_embedding(path)
    lower, upper = nibbles[:, : black_cols.min(), :], nibbles[:, black_cols.max() + 1 :, :]  # (H, w, 3)
    if lower.shape != upper.shape:
        raise EmbeddingFormatError(f"{path}: the image's side panels do not hold A1111 embedding data")
    if lower.size > MAX_PANEL_BYTES:
        raise EmbeddingFormatError(
            f"{path}: the image's side panels do not hold A1111 embedding data (each holds "
            f"{lower.size / 2**20:.0f} MB, far more than an embedding needs)"
        )
    if not lower.size:  # a uniform or plain image: nothing on either side of the black columns
        raise _no_embedding(path)
    mask = _lcg_mask(lower.size).reshape(lower.shape)  # A1111 masks each panel with the same stream
    blob = (((upper ^ mask) << 4) | (lower ^ mask)).flatten().tobytes()
    try:
        text = zlib.decompressobj().decompress(blob, MAX_CHUNK_BYTES)
        data = json.loads(text)
    except (zlib.error, ValueError, RecursionError) as exc:
        raise EmbeddingFormatError(
            f"{path}: the image's side panels do not hold A1111 embedding data ({exc})"
        ) from None
    try:
        return tensors_from_json(data, source="the image's side-panel data")
    except EmbeddingFormatError as exc:
        raise EmbeddingFormatError(f"{path}: {exc}") from None


def _rgb_pixels(path: Path, image_file: io.BytesIO) -> np.ndarray:
    """The (H, W, 3) uint8 pixels; the decoded image is let go on return (hundreds of MB when large)."""
    try:
        with Image.open(image_file) as image:
            width, height = image.size
            if width * height <= MAX_PIXELS:
                return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise EmbeddingFormatError(f"{path}: not a readable image ({exc})") from None
    raise EmbeddingFormatError(f"{path}: a {width}x{height} image is too large to scan")


def _no_embedding(path: Path) -> EmbeddingFormatError:
    return EmbeddingFormatError(
        f"{path}: the image carries no embedding (no sd-ti-embedding chunk and no A1111 side-panel data)"
    )


# --- writing ---
def card_image(emb: Embedding, size: int = 256) -> Image.Image:
    """A plain preview card (name, family, vector count) for embeddings without a preview image."""
    image = Image.new("RGB", (size, size), (32, 36, 48))
    draw = ImageDraw.Draw(image)
    lines = [f"<{emb.name}>", family_title(emb.family), f"{emb.num_vectors}v {emb.meta.get('steps', '?')}s"]
    for i, line in enumerate(lines):
        draw.text((12, 12 + 22 * i), line, fill=(235, 235, 235))
    return image


def png_bytes(emb: Embedding, image: Image.Image | None = None) -> bytes:
    """PNG bytes of `image` (or a card) carrying the `sd-ti-embedding` chunk, as A1111's trainer writes it."""
    info = PngImagePlugin.PngInfo()
    payload = base64.b64encode(json.dumps(tensors_to_json(a1111_dict(emb))).encode())
    info.add_text("sd-ti-embedding", payload)
    buffer = io.BytesIO()
    (image or card_image(emb)).convert("RGB").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_a1111_png(emb: Embedding, path: Path, image: Image.Image | None = None) -> Path:
    """Write an A1111 embedding image, atomically."""
    data = png_bytes(emb, image)
    return atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))
