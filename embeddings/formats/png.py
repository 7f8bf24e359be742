"""A1111 embeddings inside images: the `sd-ti-embedding` PNG text chunk (base64 of JSON, tensors as
{"TORCHTENSOR": lists}), and the older data hidden in the xor-masked side panels (read only, PNG or WebP).

PNG chunks are parsed here directly (not through PIL's text limits), so large embeddings read back whole.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
import zlib
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
MAX_CHUNK_BYTES = 64 * 1024 * 1024  # far above any embedding; caps what a hostile chunk can inflate to
MAX_PIXELS = 64 * 1024 * 1024


# --- reading ---
def png_text_chunks(data: bytes) -> dict[bytes, bytes]:
    """keyword -> text of every tEXt/zTXt/iTXt chunk of a PNG (uncompressed), or EmbeddingFormatError."""
    if not data.startswith(PNG_SIGNATURE):
        raise EmbeddingFormatError("not a PNG file")
    chunks: dict[bytes, bytes] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if length > MAX_CHUNK_BYTES or len(body) != length:
            raise EmbeddingFormatError("the PNG is truncated (a chunk runs past the end of the file)")
        pos += 12 + length
        if kind == b"tEXt" and b"\0" in body:
            key, text = body.split(b"\0", 1)
            chunks[key] = text
        elif kind == b"zTXt" and b"\0" in body:
            key, rest = body.split(b"\0", 1)
            chunks[key] = _inflate(rest[1:])
        elif kind == b"iTXt" and b"\0" in body:
            key, rest = body.split(b"\0", 1)
            compressed, _method, rest = rest[0], rest[1], rest[2:]
            _lang, _translated, text = rest.split(b"\0", 2) if rest.count(b"\0") >= 2 else (b"", b"", b"")
            chunks[key] = _inflate(text) if compressed else text
        elif kind == b"IEND":
            break
    return chunks


def _inflate(data: bytes) -> bytes:
    decompressor = zlib.decompressobj()
    try:
        out = decompressor.decompress(data, MAX_CHUNK_BYTES)
    except zlib.error as exc:
        raise EmbeddingFormatError(f"a compressed PNG text chunk is corrupt ({exc})") from None
    if decompressor.unconsumed_tail:
        raise EmbeddingFormatError("a compressed PNG text chunk inflates past the size limit")
    return out


def decode_chunk(text: bytes) -> object:
    """A1111's `embedding_from_b64`: base64 -> JSON -> dict with tensors."""
    try:
        return tensors_from_json(json.loads(base64.b64decode(text, validate=False)))
    except (binascii.Error, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise EmbeddingFormatError(f"the sd-ti-embedding chunk is not base64 JSON ({exc})") from None


def read_image(path: Path) -> Embedding:
    """An Embedding from an A1111 embedding image (PNG chunk, else the side panels of a PNG/WebP)."""
    path = Path(path)
    raw = path.read_bytes()
    data = None
    if raw.startswith(PNG_SIGNATURE):
        try:
            text = png_text_chunks(raw).get(CHUNK_KEY)
        except EmbeddingFormatError as exc:
            raise EmbeddingFormatError(f"{path}: {exc}") from None
        if text is not None:
            try:
                data = decode_chunk(text)
            except EmbeddingFormatError as exc:
                raise EmbeddingFormatError(f"{path}: {exc}") from None
    if data is None:
        data = _read_side_panels(path)
    emb = embedding_from_dict(data, path=path, source_format="image")
    name = data.get("name") if isinstance(data, dict) else None
    return emb.with_name(str(name)) if isinstance(name, str) and name.strip() else emb


# --- the older side-panel data (A1111 image_embedding.py: insert_image_data_embed) ---
def _lcg_mask(count: int) -> np.ndarray:
    """A1111's lcg() stream (m=2**32, a=1664525, c=1013904223, seed 0), each value % 255, low 4 bits."""
    out = np.empty(count, dtype=np.uint8)
    seed = 0
    for i in range(count):
        seed = (1664525 * seed + 1013904223) % 2**32
        out[i] = seed % 255
    return out & 0x0F


def _xor_block(block: np.ndarray) -> np.ndarray:
    return np.bitwise_xor(block.astype(np.uint8), _lcg_mask(block.size).reshape(block.shape))


def _crop_black(img: np.ndarray) -> np.ndarray:
    mask = (img > 0).all(2)
    cols, rows = mask.any(0), mask.any(1)
    if not cols.any():
        return img
    col_start, col_end = cols.argmax(), mask.shape[1] - cols[::-1].argmax()
    row_start, row_end = rows.argmax(), mask.shape[0] - rows[::-1].argmax()
    return img[row_start:row_end, col_start:col_end]


def _read_side_panels(path: Path) -> object:
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise EmbeddingFormatError(
                    f"{path}: a {image.width}x{image.height} image is too large to scan"
                )
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise EmbeddingFormatError(f"{path}: not a readable image ({exc})") from None
    nibbles = _crop_black(pixels) & 0x0F
    black_cols = np.where(nibbles.sum(axis=(0, 2)) == 0)[0]
    if black_cols.shape[0] < 2:
        raise EmbeddingFormatError(
            f"{path}: the image carries no embedding (no sd-ti-embedding chunk and no A1111 side-panel data)"
        )
    lower = _xor_block(nibbles[:, : black_cols.min(), :])
    upper = _xor_block(nibbles[:, black_cols.max() + 1 :, :])
    if lower.shape != upper.shape or lower.size > 64 * 1024 * 1024:
        raise EmbeddingFormatError(f"{path}: the image's side panels do not hold A1111 embedding data")
    blob = ((upper << 4) | lower).flatten().tobytes()
    if not blob:  # a uniform or plain image: nothing on either side of the black columns
        raise EmbeddingFormatError(
            f"{path}: the image carries no embedding (no sd-ti-embedding chunk and no A1111 side-panel data)"
        )
    try:
        decompressor = zlib.decompressobj()
        text = decompressor.decompress(blob, MAX_CHUNK_BYTES)
        return tensors_from_json(json.loads(text))
    except (zlib.error, ValueError, RecursionError) as exc:
        raise EmbeddingFormatError(
            f"{path}: the image's side panels do not hold A1111 embedding data ({exc})"
        ) from None


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
