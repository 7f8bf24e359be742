"""Import of hostile and broken files: pickles that would run code are refused, broken files are explained
with the file's name, and fuzzed bytes give an embedding or a clear error, never a crash."""

import base64
import io
import json
import pickle
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from embeddings import Embedding, EmbeddingFormatError
from embeddings.formats.pickled import UnsafePickleError
from embeddings.importing import import_path


def vec(n, width, seed=0):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


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


class _SystemCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


@pytest.mark.parametrize("container", ["zip", "legacy", "protocol-2"])
def test_an_os_system_pickle_is_refused_as_unsafe_without_torchs_advice(tmp_path, container):
    # torch words a blocked module ("Trying to load unsupported GLOBAL posix.system whose module posix is
    # blocked") differently from other globals; it must still read as refused, never as "corrupt", and
    # torch's own advice to re-run with weights_only=False must not reach the user.
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"x": _SystemCall(f"touch {marker}")}
    if container == "zip":
        torch.save(payload, evil)
    elif container == "legacy":
        torch.save(payload, evil, _use_new_zipfile_serialization=False)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refused.*GLOBAL posix\.system") as info:
        import_path(evil)
    assert "weights_only" not in str(info.value) and not marker.exists()


def test_a_refused_global_is_named_without_torchs_allow_list_advice(tmp_path):
    import subprocess

    class _Popen:
        def __reduce__(self):
            return (subprocess.Popen, (["true"],))

    evil = tmp_path / "popen.pt"
    torch.save({"x": _Popen()}, evil)
    with pytest.raises(UnsafePickleError, match=r"Popen was not an allowed global by default\)$"):
        import_path(evil)


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
        "trunc.pt": r"the file is truncated \(it ends early",
    }
    for name, message in expected.items():
        with pytest.raises(EmbeddingFormatError, match=message):
            import_path(tmp_path / name)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_emb_params_mixed_with_sdxl_keys_is_refused_at_import(tmp_path, suffix):
    # it used to be stored, and then `show`, `export` and `rename` could not read the stored file
    tensors = {"emb_params": vec(2, 768), "clip_l": vec(2, 768, seed=1)}
    path = tmp_path / f"mixed{suffix}"
    if suffix == ".pt":
        torch.save(tensors, path)
    else:
        safetensors.torch.save_file(tensors, path)
    with pytest.raises(EmbeddingFormatError, match=r"mixed.*clip_l, emb_params mix emb_params"):
        import_path(path)


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
