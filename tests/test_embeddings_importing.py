"""Import: every layout in the wild, hostile pickles refused, broken files explained, real files."""

import base64
import io
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from embeddings import Embedding, EmbeddingFormatError
from embeddings.canonical import canonical_bytes
from embeddings.formats.pickled import UnsafePickleError
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
    rows = vec(3, 768)
    data = {"<tok>_2": rows[2], "<tok>": rows[0], "<tok>_1": rows[1:2]}  # any key order, 1-D or (1, d)
    safetensors.torch.save_file({k: v.contiguous() for k, v in data.items()}, str(tmp_path / "t.safetensors"))
    (emb,) = import_path(tmp_path / "t.safetensors")
    assert emb.name == "tok" and torch.equal(emb.vectors["emb_params"], rows)


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
    with pytest.raises(EmbeddingFormatError, match="different tokens"):
        import_path(tmp_path / "learned_embeds.safetensors")


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


# --- security ---
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, container):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"string_to_param": {"*": torch.zeros(1, 768)}, "name": _Payload(str(marker))}
    if container == "zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match=r"refused.*nothing was executed"):
        import_path(evil)
    assert not marker.exists()
    with pytest.raises(EmbeddingFormatError):  # also when renamed to look like another format
        evil.rename(tmp_path / "evil.bin")
        import_path(tmp_path / "evil.bin")
    assert not marker.exists()


def test_random_bytes_in_a_pickle_are_corrupt_not_malicious(tmp_path):
    import random

    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes([0x80, 0x02]) + random.Random(0).randbytes(2000))  # a pickle header, then noise
    with pytest.raises(EmbeddingFormatError, match=r"junk\.pt: not a readable torch file: corrupt") as info:
        import_path(junk)
    assert not isinstance(info.value, UnsafePickleError) and "nothing was executed" in str(info.value)


# --- bad input gets a clear error naming the file ---
def _header(entries, data=b""):
    blob = json.dumps(entries).encode()
    return struct.pack("<Q", len(blob)) + blob + data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too short|not a readable"),
        (
            _header({"emb_params": {"dtype": "F32", "shape": [2, 768], "data_offsets": [0, 6144]}}),
            "truncated",
        ),
        (
            _header({"emb_params": {"dtype": "I32", "shape": [1, 2], "data_offsets": [0, 8]}}, b"\0" * 8),
            "floating",
        ),
        (
            _header({"emb_params": {"dtype": "F32", "shape": [1, 1, 2], "data_offsets": [0, 8]}}, b"\0" * 8),
            "3-D",
        ),
        (
            _header({"emb_params": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}}, b"\xff" * 8),
            "NaN",
        ),
        (
            _header(
                {
                    f"k{i}": {"dtype": "F32", "shape": [1, 1], "data_offsets": [4 * i, 4 * i + 4]}
                    for i in range(3)
                },
                b"\0" * 12,
            ),
            "not an embedding layout",
        ),
        (struct.pack("<Q", 2**40) + b"{}", "claims"),
    ],
)
def test_bad_safetensors_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(EmbeddingFormatError, match=message) as info:
        import_path(path)
    assert "bad.safetensors" in str(info.value)


def test_pickles_that_are_not_embeddings(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"a": torch.zeros(2, 2, 2)}, tmp_path / "3d.pt")
    torch.save({"string_to_param": {"*": vec(1, 8), "x": vec(1, 8)}}, tmp_path / "multi.pt")
    torch.save({f"layer{i}": vec(1, 768) for i in range(16)}, tmp_path / "xti.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "list.pt").read_bytes()[:40])
    expected = {
        "list.pt": "not an embedding dict",
        "3d.pt": "3-D",
        "multi.pt": "2 terms",
        "xti.pt": "XTI",
        "trunc.pt": "not a readable torch file: truncated",
    }
    for name, message in expected.items():
        with pytest.raises(EmbeddingFormatError, match=message):
            import_path(tmp_path / name)


def test_absurd_sizes_are_refused_before_loading(tmp_path, monkeypatch):
    import embeddings.importing as importing

    monkeypatch.setattr(importing, "MAX_FILE_BYTES", 1000)
    safetensors.torch.save_file({"emb_params": vec(1, 768)}, str(tmp_path / "big.safetensors"))
    with pytest.raises(EmbeddingFormatError, match="too large"):
        import_path(tmp_path / "big.safetensors")
    torch.save({"emb_params": torch.zeros(2000, 768)}, tmp_path / "many.pt")
    monkeypatch.setattr(importing, "MAX_FILE_BYTES", 2**30)
    with pytest.raises(EmbeddingFormatError, match="not an embedding"):
        import_path(tmp_path / "many.pt")


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"string_to_param": {"*": {"TORCHTENSOR": [[1, 2], [3]]}}}',
        b"\xff\xfe",
    ],
)
def test_hostile_png_chunks_get_a_clear_error(tmp_path, payload):
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(payload))
    Image.new("RGB", (8, 8)).save(tmp_path / "evil.png", pnginfo=info)
    with pytest.raises(EmbeddingFormatError, match=r"evil\.png"):
        import_path(tmp_path / "evil.png")


def test_png_without_embedding_and_truncated_png(tmp_path):
    Image.new("RGB", (16, 16), "blue").save(tmp_path / "plain.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "black.png")  # all black: no side panels at all
    for name in ("plain.png", "black.png"):
        with pytest.raises(EmbeddingFormatError, match="carries no embedding"):
            import_path(tmp_path / name)
    emb = Embedding("c", {"emb_params": vec(1, 768)})
    from embeddings.formats.png import png_bytes

    (tmp_path / "cut.png").write_bytes(png_bytes(emb)[:200])
    with pytest.raises(EmbeddingFormatError, match=r"cut\.png"):
        import_path(tmp_path / "cut.png")


# --- fuzzing: whatever the bytes, the importer answers with an embedding or a clear error ---
def _valid_files():
    buffer = io.BytesIO()
    torch.save({"string_to_param": {"*": vec(2, 16)}, "name": "z"}, buffer)
    pt = buffer.getvalue()
    st_bytes = safetensors.torch.save({"emb_params": vec(2, 16)})
    from embeddings.formats.png import png_bytes

    png = png_bytes(Embedding("z", {"emb_params": vec(2, 16)}), Image.new("RGB", (8, 8)))
    return {"f.pt": pt, "f.safetensors": st_bytes, "f.png": png}


VALID = _valid_files()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(VALID)),
    cut=st.integers(min_value=0, max_value=4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 255)), max_size=4),
)
def test_fuzzed_files_import_or_fail_cleanly(tmp_path, kind, cut, flips):
    data = bytearray(VALID[kind][: max(1, len(VALID[kind]) - cut)])
    for position, mask in flips:
        if data:
            data[position % len(data)] ^= mask
    path = tmp_path / kind
    path.write_bytes(bytes(data))
    try:
        result = import_path(path)
    except EmbeddingFormatError as exc:
        assert kind in str(exc)
        return
    assert len(result) == 1 and torch.isfinite(result[0].vectors["emb_params"]).all()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=512))
def test_random_bytes_never_crash_the_importer(tmp_path, blob):
    for suffix in (".pt", ".safetensors", ".png"):
        path = tmp_path / f"r{suffix}"
        path.write_bytes(blob)
        with pytest.raises(EmbeddingFormatError):
            import_path(path)


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
