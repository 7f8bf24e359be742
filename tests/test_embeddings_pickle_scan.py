"""The opcode scan that tells a malicious pickle from a corrupt one (embeddings/formats/pickled.py) stays
bounded on hostile zips and never reads raw tensor bytes as imports."""

import io
import zipfile

import pytest
import torch

from embeddings import import_path
from embeddings.errors import EmbeddingFormatError
from embeddings.formats.pickled import UnsafePickleError


def vec(n, d):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def test_the_scan_of_a_refused_zip_reads_only_the_pickle_torch_reads(tmp_path, monkeypatch):
    from embeddings.formats import pickled

    read = []
    monkeypatch.setattr(pickled, "pickle_globals", lambda data, **_: read.append(len(data)) or [])
    path = tmp_path / "many.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for i in range(6):  # stored, as torch stores records: reading each would cost 6 x 4 MB
            archive.writestr(f"a{i}/data.pkl", b"\0" * (4 << 20))
    with pytest.raises(EmbeddingFormatError):
        import_path(path)
    assert read == [4 << 20]  # one member (the first top-level data.pkl), capped by MAX_PICKLE_SCAN


def test_a_legacy_torch_file_cut_short_is_truncated_not_malicious(tmp_path):
    whole = io.BytesIO()
    data = {"string_to_param": {"*": vec(1, 147)}, "name": "x"}
    torch.save(data, whole, _use_new_zipfile_serialization=False)
    path = tmp_path / "cut.pt"
    path.write_bytes(whole.getvalue()[:-100])  # a download cut short, in the raw tensor bytes
    with pytest.raises(EmbeddingFormatError) as caught:
        import_path(path)
    assert not isinstance(caught.value, UnsafePickleError) and "truncated" in str(caught.value)


def test_without_torchs_list_of_safe_globals_an_ordinary_file_is_not_called_unsafe(tmp_path, monkeypatch):
    from torch import _weights_only_unpickler

    from embeddings.formats.pickled import _unsafe_globals

    monkeypatch.delattr(_weights_only_unpickler, "_get_allowed_globals", raising=False)
    ordinary = io.BytesIO()
    torch.save({"string_to_param": {"*": vec(1, 8)}}, ordinary, _use_new_zipfile_serialization=False)
    path = tmp_path / "ordinary.pt"
    path.write_bytes(ordinary.getvalue())
    assert _unsafe_globals(path) == []
