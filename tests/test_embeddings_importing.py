"""Import: every layout in the wild and real files from other tools (hostile and broken files:
test_embeddings_import_errors.py)."""

import base64
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image, PngImagePlugin

from embeddings import Embedding, EmbeddingFormatError
from embeddings.canonical import canonical_bytes
from embeddings.importing import import_path

REALWORLD = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "realworld"


def vec(n, width, seed=0):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


# --- every layout ---
def test_diffusers_safetensors_and_bin_one_and_two_dimensional(tmp_path):
    two_d, one_d = vec(3, 768), vec(1, 768)[0]
    safetensors.torch.save_file({"<cat-toy>": two_d}, str(tmp_path / "learned_embeds.safetensors"))
    torch.save({"<dog>": one_d}, tmp_path / "dog.bin")
    (cat,) = import_path(tmp_path / "learned_embeds.safetensors")
    (dog,) = import_path(tmp_path / "dog.bin")
    assert (cat.name, cat.meta["token"], cat.family) == ("cat-toy", "<cat-toy>", "sd1")
    assert torch.equal(cat.vectors["emb_params"], two_d)
    assert dog.name == "dog" and torch.equal(dog.vectors["emb_params"], one_d.unsqueeze(0))


def test_diffusers_multi_token_dict_with_one_key_per_vector(tmp_path):
    rows = vec(12, 768)  # 12: _10 and _11 sort before _2 as text, so only the numeric order passes
    keys = ["<tok>", *(f"<tok>_{i}" for i in range(1, 12))]
    data = {keys[i]: rows[i] if i % 2 else rows[i : i + 1] for i in (5, 11, 0, 2, 10, 1, 3, 4, 6, 7, 8, 9)}
    safetensors.torch.save_file({k: v.contiguous() for k, v in data.items()}, str(tmp_path / "t.safetensors"))
    (emb,) = import_path(tmp_path / "t.safetensors")
    assert emb.name == "tok" and torch.equal(emb.vectors["emb_params"], rows)  # any key order, 1-D or (1, d)


@pytest.mark.parametrize("given", ["first", "second", "folder"])
def test_diffusers_sdxl_pair_from_either_file_or_the_folder(tmp_path, given):
    lo, g = vec(2, 768, 1), vec(2, 1280, 2)
    safetensors.torch.save_file({"<xl>": lo}, str(tmp_path / "learned_embeds.safetensors"))
    safetensors.torch.save_file({"<xl>": g}, str(tmp_path / "learned_embeds_2.safetensors"))
    target = {
        "first": tmp_path / "learned_embeds.safetensors",
        "second": tmp_path / "learned_embeds_2.safetensors",
    }
    (emb,) = import_path(target.get(given, tmp_path))
    assert (emb.name, emb.family, emb.meta["source_format"]) == ("xl", "sdxl", "diffusers:sdxl-pair")
    assert torch.equal(emb.vectors["clip_l"], lo) and torch.equal(emb.vectors["clip_g"], g)


def test_a_folder_with_unmatched_pair_files_imports_them_one_by_one(tmp_path):
    safetensors.torch.save_file({"<a>": vec(1, 768)}, str(tmp_path / "learned_embeds.safetensors"))
    safetensors.torch.save_file({"<b>": vec(1, 1280)}, str(tmp_path / "learned_embeds_2.safetensors"))
    assert sorted(e.name for e in import_path(tmp_path)) == ["a", "b"]
    # one of them, named: that file alone (it used to fail: "import the files one by one")
    (first,) = import_path(tmp_path / "learned_embeds.safetensors")
    (second,) = import_path(tmp_path / "learned_embeds_2.safetensors")
    assert (first.name, first.widths, second.name, second.widths) == (
        "a",
        {"emb_params": 768},
        "b",
        {"emb_params": 1280},
    )


def test_an_a1111_pickle_renamed_to_safetensors_is_read_as_the_pickle_it_is(tmp_path):
    # torch.load picks its safetensors reader for a *path* ending in .safetensors; the importer sniffs bytes
    rows = vec(2, 768)
    path = tmp_path / "renamed.safetensors"
    torch.save({"string_to_param": {"*": rows}, "name": "renamed", "step": 500}, path)
    (emb,) = import_path(path)
    assert torch.equal(emb.vectors["emb_params"], rows) and emb.meta["steps"] == "500"


def test_a1111_pt_keeps_its_provenance(tmp_path):
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(vec(4, 1024))},
        "name": "my style",
        "step": 3000,
        "sd_checkpoint": "abc123",
        "sd_checkpoint_name": "v2-1_768",
    }
    torch.save(data, tmp_path / "my style.pt")
    (emb,) = import_path(tmp_path / "my style.pt")
    assert (emb.name, emb.family, emb.num_vectors) == ("my-style", "sd2", 4)
    assert emb.meta["steps"] == "3000" and emb.meta["base_model"] == "v2-1_768 [abc123]"
    assert emb.meta["source_name"] == "my style" and emb.meta["a1111.name"] == "my style"


def test_original_textual_inversion_parameter_dict_checkpoint(tmp_path):
    # rinongal/textual_inversion's EmbeddingManager saves string_to_param as an nn.ParameterDict
    tensor = vec(1, 768)
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(tensor.clone())})
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": params}, tmp_path / "ti.pt")
    (emb,) = import_path(tmp_path / "ti.pt")
    assert emb.name == "ti" and torch.equal(emb.vectors["emb_params"], tensor)


def test_kohya_and_sdxl_single_file_safetensors(tmp_path):
    safetensors.torch.save_file({"emb_params": vec(8, 768).half()}, str(tmp_path / "neg.safetensors"))
    safetensors.torch.save_file(
        {"clip_l": vec(2, 768), "clip_g": vec(2, 1280)}, str(tmp_path / "xl.safetensors"), {"ss_x": "kept"}
    )
    neg, xl = import_path(tmp_path / "neg.safetensors")[0], import_path(tmp_path / "xl.safetensors")[0]
    assert (neg.family, neg.num_vectors, neg.meta["source_format"]) == ("sd1", 8, "safetensors:kohya")
    assert (xl.family, xl.meta["ss_x"], xl.meta["source_format"]) == ("sdxl", "kept", "safetensors:sdxl")


@pytest.mark.parametrize("length", [384, 19280])
def test_safetensors_whose_header_length_starts_like_a_pickle_is_read_as_safetensors(tmp_path, length):
    # little-endian 384 starts with 0x80 (a pickle's first byte), 19280 with "PK" (a zip): still safetensors
    emb = Embedding("cat", {"emb_params": vec(1, 8)}, {"base_model": "sd15"})
    base = struct.unpack_from("<Q", canonical_bytes(emb.with_meta(init="")))[0]
    for pad in range(length - base - 8, length - base + 1):
        data = canonical_bytes(emb.with_meta(init="x" * pad))
        if struct.unpack_from("<Q", data)[0] == length:
            break
    assert data[:1] == b"\x80" or data[:2] == b"PK"
    (tmp_path / "cat.safetensors").write_bytes(data)
    (got,) = import_path(tmp_path / "cat.safetensors")
    assert got.meta["source_format"] == "safetensors:canonical" and got.meta["base_model"] == "sd15"


def test_a1111_png_chunk_as_a1111_writes_it(tmp_path):
    # A1111's embedding_to_b64: json.dumps with tensors as {"TORCHTENSOR": list}, then base64
    tensor = vec(2, 768)
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": {"TORCHTENSOR": tensor.tolist()}},
        "name": "pngcat",
        "step": 500,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
    }
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data).encode()))
    Image.new("RGB", (32, 32), "white").save(tmp_path / "card.png", pnginfo=info)
    (emb,) = import_path(tmp_path / "card.png")
    assert emb.name == "pngcat" and emb.meta["steps"] == "500"
    assert torch.equal(emb.vectors["emb_params"], tensor)


def _lcg_nibbles(count):
    seed, out = 0, []
    for _ in range(count):
        seed = (1664525 * seed + 1013904223) % 2**32
        out.append(seed % 255)
    return np.array(out, dtype=np.uint8) & 0x0F


def _a1111_side_panels(image, data):
    """A1111's insert_image_data_embed, minus the decorative high-nibble pattern (which readers ignore)."""
    blob = np.frombuffer(zlib.compress(json.dumps(data).encode(), 9), np.uint8)
    h, d = image.size[1], 3
    size = blob.shape[0] + (h - blob.shape[0] % h)
    size = size + (h * d - size % (h * d))
    panels = []
    for nibbles in (blob & 0x0F, blob >> 4):
        block = np.resize(nibbles, size).reshape(h, -1, d)
        block = block ^ _lcg_nibbles(block.size).reshape(block.shape)
        panels.append(Image.fromarray((block | 0x80).astype(np.uint8), "RGB"))
    low, high = panels
    canvas = Image.new("RGB", (image.size[0] + low.size[0] + high.size[0] + 2, h), (0, 0, 0))
    canvas.paste(low, (0, 0))
    canvas.paste(image, (low.size[0] + 1, 0))
    canvas.paste(high, (low.size[0] + 1 + image.size[0] + 1, 0))
    return canvas


def test_a1111_side_panel_data_in_png_and_lossless_webp(tmp_path):
    tensor = vec(1, 768, 3)
    data = {"string_to_param": {"*": {"TORCHTENSOR": tensor.tolist()}}, "name": "hidden", "step": 7}
    picture = Image.fromarray(np.full((64, 64, 3), 0x99, np.uint8))
    canvas = _a1111_side_panels(picture, data)
    canvas.save(tmp_path / "hidden.png")
    canvas.save(tmp_path / "hidden.webp", lossless=True)
    for file in ("hidden.png", "hidden.webp"):
        (emb,) = import_path(tmp_path / file)
        assert emb.name == "hidden" and torch.equal(emb.vectors["emb_params"], tensor)


def test_folder_imports_all_embeddings_and_reports_the_rest(tmp_path):
    safetensors.torch.save_file({"emb_params": vec(1, 768)}, str(tmp_path / "a.safetensors"))
    torch.save({"<b>": vec(1, 768)}, tmp_path / "b.bin")
    (tmp_path / "notes.txt").write_text("skipped silently: not an embedding suffix")
    (tmp_path / "broken.pt").write_bytes(b"\x80\x04garbage")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.preview.png")
    skipped = []
    names = [e.name for e in import_path(tmp_path, skipped=skipped)]
    assert names == ["a", "b"] and [p.name for p, _ in skipped] == ["broken.pt"]
    with pytest.raises(EmbeddingFormatError, match=r"broken\.pt"):
        import_path(tmp_path)


# --- files made by other tools ---
def _realworld(name):
    path = REALWORLD / name
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


def test_real_a1111_bad_hands_5():
    (emb,) = import_path(_realworld("bad-hands-5.pt"))
    assert (emb.name, emb.family, emb.num_vectors) == ("bad-hands-5", "sd1", 2)
    assert emb.meta["steps"] == "1419" and emb.meta["base_model"] == "7th7-any3 [5d2f8777af]"


def test_real_kohya_easynegative():
    (emb,) = import_path(_realworld("EasyNegative.safetensors"))
    assert (emb.name, emb.family, emb.num_vectors, emb.widths) == (
        "EasyNegative",
        "sd1",
        8,
        {"emb_params": 768},
    )
