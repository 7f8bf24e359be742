"""The same embedding gives the same file bytes in every process: safetensors writes its metadata in an order
that changes between processes, so the header is written again in sorted order (a re-push to the hub is then
no new commit, and an A1111 hash of the file stays the same)."""

import json
import struct
import subprocess
import sys

import safetensors.torch
import torch

from embeddings import Embedding
from embeddings.canonical import canonical_bytes
from embeddings.files import safetensors_bytes

MAKE = """
import sys, torch
from embeddings import Embedding
from embeddings.canonical import canonical_bytes
meta = {"created": "2026-11-28T08:00:00Z", **{f"key{i}": str(i) for i in range(12)}}
emb = Embedding("cat", {"clip_l": torch.arange(8.0).reshape(2, 4), "clip_g": torch.ones(2, 6)}, meta)
sys.stdout.buffer.write(canonical_bytes(emb))
"""


def header(data: bytes) -> tuple[int, str]:
    (length,) = struct.unpack("<Q", data[:8])
    return length, data[8 : 8 + length].decode("utf-8")


def test_the_header_is_sorted_padded_and_reads_back_as_safetensors_wrote_it():
    tensors = {"emb_params": torch.randn(3, 5), "b": torch.zeros(1, 2)}
    meta = {f"k{i}": f"é {i}" for i in (5, 1, 9, 3, 7, 0)}
    data = safetensors_bytes(tensors, meta)
    length, text = header(data)
    assert length % 8 == 0
    parsed = json.loads(text)
    assert list(parsed) == ["__metadata__", "b", "emb_params"]
    assert list(parsed["__metadata__"]) == sorted(meta)
    loaded = safetensors.torch.load(data)
    assert sorted(loaded) == sorted(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    plain = safetensors.torch.save(tensors, metadata=meta)
    assert data[8 + length :] == plain[8 + header(plain)[0] :]  # the tensor bytes are untouched


def test_the_canonical_file_is_the_same_bytes_in_two_processes():
    runs = [
        subprocess.run([sys.executable, "-c", MAKE], capture_output=True, check=True).stdout for _ in "ab"
    ]
    assert runs[0] == runs[1]
    meta = {"created": "2026-11-28T08:00:00Z", **{f"key{i}": str(i) for i in range(12)}}
    emb = Embedding("cat", {"clip_l": torch.arange(8.0).reshape(2, 4), "clip_g": torch.ones(2, 6)}, meta)
    assert canonical_bytes(emb) == runs[0]  # and this process too
