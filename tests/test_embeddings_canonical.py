"""The canonical file: exact keys and metadata, header-only reads, atomic writes, corrupted files refused."""

import json
import struct

import pytest
import safetensors.torch
import torch

from embeddings import Embedding, EmbeddingFormatError, load_canonical, read_header, save_canonical
from embeddings.canonical import canonical_meta

REQUIRED = {"tokensmith.version", "name", "family", "num_vectors", "created", "sha256"}


def sdxl():
    torch.manual_seed(0)
    return Embedding("xl", {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, {"init": "cat"})


def test_saved_file_has_the_design_keys_and_string_metadata(tmp_path):
    path = save_canonical(sdxl(), tmp_path / "xl.safetensors")
    tensors = safetensors.torch.load_file(str(path))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"clip_l": (2, 768), "clip_g": (2, 1280)}
    meta = read_header(path)["__metadata__"]
    assert set(meta) >= REQUIRED and all(isinstance(v, str) for v in meta.values())
    assert (meta["family"], meta["num_vectors"], meta["init"]) == ("sdxl", "2", "cat")
    assert meta["sha256"] == sdxl().sha256


def test_round_trip_is_bit_identical_and_name_is_the_stem(tmp_path):
    path = save_canonical(sdxl(), tmp_path / "renamed.safetensors")
    loaded = load_canonical(path)
    assert loaded.name == "renamed"
    assert all(torch.equal(loaded.vectors[k], sdxl().vectors[k]) for k in ("clip_l", "clip_g"))


def test_overwrite_false_refuses_an_existing_file(tmp_path):
    path = save_canonical(sdxl(), tmp_path / "xl.safetensors")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_canonical(sdxl().with_meta(init="dog"), path, overwrite=False)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["xl.safetensors"]  # no temp file left behind


def test_read_header_reads_no_tensor_data(tmp_path, monkeypatch):
    path = save_canonical(sdxl(), tmp_path / "xl.safetensors")
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("tensor data read"))
    header = read_header(path)
    assert header["clip_g"]["shape"] == [2, 1280]


def _raw(header: dict, data: bytes = b"") -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too short"),
        (b"\x00\x00", "too short"),
        (struct.pack("<Q", 10**9) + b"{}", "claims"),
        (struct.pack("<Q", 4) + b"nope", "not valid JSON"),
        (_raw({"emb_params": {"dtype": "F32", "shape": [1, 4], "data_offsets": [0, 16]}}), "truncated"),
        (_raw({"emb_params": {"dtype": "XX", "shape": [1], "data_offsets": [0, 0]}}), "malformed"),
        (_raw({"__metadata__": {"a": 1}}), "strings"),
        (struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_broken_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(EmbeddingFormatError, match=message) as info:
        load_canonical(path)
    assert "broken.safetensors" in str(info.value)


def test_tampered_tensor_data_is_detected_by_sha256(tmp_path):
    path = save_canonical(sdxl(), tmp_path / "xl.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(EmbeddingFormatError, match="corrupted"):
        load_canonical(path)


def test_kohya_file_without_metadata_loads_and_other_layouts_are_pointed_to_import(tmp_path):
    kohya = tmp_path / "neg.safetensors"
    safetensors.torch.save_file({"emb_params": torch.ones(8, 768, dtype=torch.float16)}, str(kohya))
    emb = load_canonical(kohya)
    assert (emb.name, emb.family, emb.num_vectors, emb.vectors["emb_params"].dtype) == (
        "neg",
        "sd1",
        8,
        torch.float32,
    )
    other = tmp_path / "diffusers.safetensors"
    safetensors.torch.save_file({"<cat>": torch.ones(1, 768)}, str(other))
    with pytest.raises(EmbeddingFormatError, match="tokensmith import"):
        load_canonical(other)


def test_canonical_meta_keeps_existing_creation_time():
    emb = sdxl().with_meta(created="2020-01-01T00:00:00+00:00")
    assert canonical_meta(emb)["created"] == "2020-01-01T00:00:00+00:00"
