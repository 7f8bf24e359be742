"""The PNG side of A1111 embedding images: chunk parsing (tEXt, zTXt, iTXt), writing, the side-panel mask."""

import base64
import io
import json

import pytest
import torch
from PIL import Image, PngImagePlugin

from embeddings import Embedding, EmbeddingFormatError
from embeddings.formats.png import CHUNK_KEY, _lcg_mask, card_image, png_bytes, png_text_chunks, read_image


def chunk_png(payload: bytes, how: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    if how == "itxt":
        info.add_itxt("sd-ti-embedding", payload.decode(), zip=True)
    else:
        info.add_text("sd-ti-embedding", payload, zip=how == "ztxt")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


@pytest.mark.parametrize("how", ["text", "ztxt", "itxt"])
def test_every_png_text_chunk_kind_is_read(tmp_path, how):
    tensor = torch.randn(2, 16)
    data = {"string_to_param": {"*": {"TORCHTENSOR": tensor.tolist()}}, "name": "z"}
    (tmp_path / "z.png").write_bytes(chunk_png(base64.b64encode(json.dumps(data).encode()), how))
    emb = read_image(tmp_path / "z.png")
    assert emb.name == "z" and torch.equal(emb.vectors["emb_params"], tensor)


def test_written_png_carries_the_chunk_and_the_picture():
    emb = Embedding("cat", {"emb_params": torch.randn(1, 8)}, {"steps": "50"})
    raw = png_bytes(emb, Image.new("RGB", (10, 6), "red"))
    assert CHUNK_KEY in png_text_chunks(raw)
    with Image.open(io.BytesIO(raw)) as image:
        assert image.size == (10, 6) and image.getpixel((0, 0)) == (255, 0, 0)
    assert card_image(emb).size == (256, 256)


def test_lcg_mask_matches_a1111s_reference_stream():
    # the first values of A1111's lcg() (image_embedding.py's self-test), low 4 bits
    reference = [253, 242, 127, 44, 157, 27, 239, 133, 38, 79, 167, 4, 177, 95, 130, 79]
    assert _lcg_mask(16).tolist() == [v & 0x0F for v in reference]


def test_not_a_png_and_truncated_chunks():
    with pytest.raises(EmbeddingFormatError, match="not a PNG"):
        png_text_chunks(b"GIF89a")
    raw = chunk_png(b"abc", "text")
    cut = raw[: raw.index(b"tEXt") + 6]
    with pytest.raises(EmbeddingFormatError, match="truncated"):
        png_text_chunks(cut)
