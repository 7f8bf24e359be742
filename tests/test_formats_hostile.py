"""Crafted embedding files that cost far more than their size to read (re-zipped torch files, PNGs stuffed
with compressed text, huge side panels), and TORCHTENSOR entries that are not numbers: each is refused with
a one-line error naming the file, before the expensive part, and a folder import skips it."""

import base64
import io
import json
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from embeddings import EmbeddingFormatError, importing
from embeddings.formats import png
from embeddings.formats.png import _lcg_mask, read_image
from embeddings.importing import import_file, import_path

TENSOR = torch.arange(768, dtype=torch.float32).reshape(1, 768) / 768


# --- torch zip files ---
def _torch_zip(path, **save):
    torch.save({"emb_params": TENSOR}, path, **save)
    return path


def _rezipped(source, target, compression):
    """`source`'s records written again with `compression`: torch's reader inflates them all the same."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", compression) as out:
        for record in src.infolist():
            out.writestr(record.filename, src.read(record.filename))
    return target


def test_a_real_torch_zip_stores_every_record():
    # the premise of the check: torch.save never compresses a record
    with zipfile.ZipFile(_torch_zip(io.BytesIO())) as archive:
        assert {r.compress_type for r in archive.infolist()} == {zipfile.ZIP_STORED}


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA], ids=["deflated", "lzma"])
def test_compressed_torch_zip_is_refused_before_torch_reads_it(tmp_path, monkeypatch, compression):
    bomb = _rezipped(_torch_zip(tmp_path / "plain.pt"), tmp_path / "bomb.pt", compression)
    read = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: read.append(a))
    with pytest.raises(EmbeddingFormatError) as caught:
        import_file(bomb)
    message = str(caught.value)
    assert message.startswith(f"{bomb}: refused: its record ") and "\n" not in message
    assert "not a file torch or A1111 wrote" in message and "get the original file" in message
    assert not read  # torch never saw it


def test_stored_records_that_overlap_past_the_cap_are_refused(tmp_path, monkeypatch):
    """A central directory that names one stored tensor a thousand times: the file stays small, what torch
    could be asked to read does not."""
    source, path = _torch_zip(tmp_path / "plain.pt"), tmp_path / "overlap.pt"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as out:
        for record in src.infolist():
            out.writestr(record.filename, src.read(record.filename))
        data = next(r for r in out.infolist() if r.filename.endswith("/data/0"))
        out.filelist.extend([data] * 1000)  # the same local header, listed again in the directory
    monkeypatch.setattr(importing, "MAX_FILE_BYTES", 1024 * 1024)
    assert path.stat().st_size < importing.MAX_FILE_BYTES
    with pytest.raises(
        EmbeddingFormatError, match=r"refused: its zip records add up to 3 MB.*\(1 MB at most\)"
    ):
        import_file(path)


def test_honest_torch_files_still_import(tmp_path):
    for path in (
        _torch_zip(tmp_path / "zip.pt"),
        _torch_zip(tmp_path / "old.pt", _use_new_zipfile_serialization=False),
    ):
        assert torch.equal(import_file(path).vectors["emb_params"], TENSOR)


def test_legacy_torch_file_with_an_edited_storage_size_is_worded(tmp_path):
    raw = _torch_zip(io.BytesIO(), _use_new_zipfile_serialization=False).getvalue()
    record = len(raw) - 768 * 4 - 8  # the file ends with the storage's size (int64), then its 768 floats
    assert raw[record : record + 8] == (768).to_bytes(8, "little")
    (tmp_path / "lie.pt").write_bytes(raw[:record] + (2**31 + 768).to_bytes(8, "little") + raw[record + 8 :])
    with pytest.raises(EmbeddingFormatError) as caught:
        import_file(tmp_path / "lie.pt")
    message = str(caught.value)
    assert "truncated or edited: a tensor claims more (or fewer) bytes than the file holds" in message
    assert "%ld" not in message and message.startswith(str(tmp_path / "lie.pt"))


# --- PNG text chunks ---
def _chunk(kind, body):
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _png_with(*chunks, embedding=None):
    info = PngImagePlugin.PngInfo()
    if embedding is not None:
        info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(embedding).encode()))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    raw = buffer.getvalue()
    end = raw.rindex(b"IEND") - 4
    return raw[:end] + b"".join(chunks) + raw[end:]


def test_other_compressed_text_chunks_are_never_inflated(tmp_path):
    stuffed = zlib.compress(b"A" * (16 * 1024 * 1024), 9)  # 16 KB that inflates to 16 MB
    chunks = [_chunk(b"zTXt", b"k%d\0\0" % i + stuffed) for i in range(6)]
    (tmp_path / "stuffed.png").write_bytes(_png_with(*chunks))
    tracemalloc.start()
    try:
        with pytest.raises(EmbeddingFormatError) as caught:
            import_file(tmp_path / "stuffed.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024  # inflating them all would hold 96 MB
    assert str(caught.value) == (
        f"{tmp_path / 'stuffed.png'}: the image carries no embedding (no sd-ti-embedding chunk and no A1111 "
        "side-panel data)"
    )  # not PIL's "Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK"


def test_a_corrupt_chunk_beside_the_embedding_does_not_matter(tmp_path):
    embedding = {"string_to_param": {"*": {"TORCHTENSOR": TENSOR.tolist()}}, "name": "beside"}
    (tmp_path / "beside.png").write_bytes(
        _png_with(_chunk(b"zTXt", b"parameters\0\0not zlib"), embedding=embedding)
    )
    emb = import_file(tmp_path / "beside.png")
    assert emb.name == "beside" and torch.equal(emb.vectors["emb_params"], TENSOR)


def test_embedding_chunks_inflate_to_a_capped_total(tmp_path, monkeypatch):
    monkeypatch.setattr(png, "MAX_CHUNK_BYTES", 1024 * 1024)
    half = zlib.compress(b"A" * 600 * 1024)  # each alone is under the cap, the two are not
    chunks = [_chunk(b"zTXt", b"sd-ti-embedding\0\0" + half) for _ in range(2)]
    (tmp_path / "two.png").write_bytes(_png_with(*chunks))
    with pytest.raises(EmbeddingFormatError, match=r"two\.png: its compressed text chunks inflate past 1 MB"):
        import_file(tmp_path / "two.png")


# --- TORCHTENSOR entries that are not numbers ---
@pytest.mark.parametrize(
    ("values", "why"),
    [
        ("[[" + "9" * 400 + ", 1.0]]", "int too large to convert to float"),
        ("[[true, false]]", "it holds a boolean"),
        ('[["a", "b"]]', "it holds a string"),
        ("[[1.0, null]]", "it holds null"),
        ("[[1, 2], [3]]", "expected sequence of length 2"),
    ],
)
def test_a_torchtensor_of_non_numbers_is_one_line_naming_the_file(tmp_path, values, why):
    text = '{"string_to_param": {"*": {"TORCHTENSOR": ' + values + '}}, "name": "x"}'
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(text.encode()))
    Image.new("RGB", (8, 8)).save(tmp_path / "odd.png", pnginfo=info)
    with pytest.raises(EmbeddingFormatError) as caught:
        import_file(tmp_path / "odd.png")
    message = str(caught.value)
    assert message.startswith(
        f"{tmp_path / 'odd.png'}: the sd-ti-embedding chunk holds a TORCHTENSOR that is not a numeric array ("
    )
    assert why in message and "base64" not in message and "\n" not in message


def test_a_folder_import_skips_a_non_numeric_torchtensor_and_imports_the_rest(tmp_path):
    text = '{"string_to_param": {"*": {"TORCHTENSOR": [[' + "9" * 400 + "]]}}}"
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(text.encode()))
    Image.new("RGB", (8, 8)).save(tmp_path / "bigint.png", pnginfo=info)
    _torch_zip(tmp_path / "good.pt")
    skipped = []
    assert [emb.name for emb in import_path(tmp_path, skipped=skipped)] == ["good"]
    assert [(p.name, "not a numeric array" in why) for p, why in skipped] == [("bigint.png", True)]


# --- A1111's side panels ---
def _reference_mask(count):
    """A1111's lcg(), one value at a time, as image_embedding.py computes it."""
    seed, out = 0, []
    for _ in range(count):
        seed = (1664525 * seed + 1013904223) % 2**32
        out.append(seed % 255)
    return np.array(out, dtype=np.uint8) & 0x0F


def test_lcg_mask_matches_a1111s_loop_over_a_long_stream():
    for count in (0, 1, 2, 3, 1000, 4097, 70001):
        assert np.array_equal(_lcg_mask(count), _reference_mask(count)), count


def _panelled(data):
    """A1111's insert_image_data_embed of `data` beside a 32x32 grey picture."""
    blob = np.frombuffer(zlib.compress(json.dumps(data).encode(), 9), np.uint8)
    height = 32
    size = -(-blob.size // (height * 3)) * height * 3
    panels = []
    for nibbles in (blob & 0x0F, blob >> 4):
        block = np.resize(nibbles, size).reshape(height, -1, 3)
        panels.append((block ^ _reference_mask(block.size).reshape(block.shape)) | 0x80)  # (32, w, 3)
    gap = np.zeros((height, 1, 3), np.uint8)
    picture = np.full((height, 32, 3), 0x99, np.uint8)
    return Image.fromarray(np.concatenate([panels[0], gap, picture, gap, panels[1]], axis=1).astype(np.uint8))


def test_side_panel_torchtensor_of_booleans_is_refused(tmp_path):
    _panelled({"string_to_param": {"*": {"TORCHTENSOR": [[True, False]]}}}).save(tmp_path / "bools.png")
    with pytest.raises(EmbeddingFormatError) as caught:
        read_image(tmp_path / "bools.png")
    assert str(caught.value) == (
        f"{tmp_path / 'bools.png'}: the image's side-panel data holds a TORCHTENSOR that is not a numeric "
        "array (it holds a boolean)"
    )


def test_panels_larger_than_any_embedding_are_refused_before_masking(tmp_path, monkeypatch):
    pixels = np.full((2000, 2000, 3), 16, np.uint8)  # nibble 0 but not black: kept by the crop
    pixels[:, :999] = pixels[:, 1001:] = 17  # two panels of 2000x999 pixels, 6 MB each
    Image.fromarray(pixels).save(tmp_path / "panels.png")
    masked = []
    monkeypatch.setattr(png, "_lcg_mask", lambda count: masked.append(count))
    with pytest.raises(EmbeddingFormatError, match=r"panels\.png: .*\(each holds 6 MB, far more than"):
        import_file(tmp_path / "panels.png")
    assert not masked
