"""Importing, continued: folders with subfolders, pickles in Python's default protocol, the same file given
twice, truncated zips, stored files that no longer read, the doctor's finer warnings, 1-D vectors, and the
metadata A1111 exports carry."""

import io
import json
import os
import pickle
import zipfile

import pytest
import safetensors.torch
import torch
from clirun import run

from embeddings import Embedding, Store, import_path, save_canonical
from embeddings.doctor import diagnose, diagnose_each
from embeddings.errors import EmbeddingFormatError
from embeddings.exporting import export
from embeddings.formats.pickled import UnsafePickleError
from embeddings.importing import import_sources
from studio.cli import EXIT_ERROR, EXIT_OK


def vec(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def write(folder, name, n=2, width=768, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    return save_canonical(
        Embedding(name, {"emb_params": vec(n, width, seed)}), folder / f"{name}.safetensors"
    )


def diffusers_file(path, token, tensor):
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({token: tensor}, str(path))


# --- folders are read with their subfolders (F5) ---
def test_a_folder_import_reads_subfolders_and_nested_sdxl_pairs_but_not_hidden_folders(tmp_path):
    top = tmp_path / "a1111-embeddings"
    write(top, "cat")
    (top / "negative").mkdir()
    torch.save({"string_to_param": {"*": vec(1, 768, 1)}}, top / "negative" / "neg.pt")
    diffusers_file(top / "xl" / "run" / "learned_embeds.safetensors", "<toy>", vec(2, 768, 2))
    diffusers_file(top / "xl" / "run" / "learned_embeds_2.safetensors", "<toy>", vec(2, 1280, 3))
    write(top / ".trash" / "123", "deleted")
    found = {emb.name: (source, emb) for source, emb in import_sources(top)}
    assert sorted(found) == ["cat", "neg", "toy"]
    assert found["toy"][0] == top / "xl" / "run" and found["toy"][1].widths == {"clip_l": 768, "clip_g": 1280}
    write(tmp_path / "only-subfolders" / "inner", "dog")
    assert [e.name for e in import_path(tmp_path / "only-subfolders")] == ["dog"]


def test_a_folder_with_no_embeddings_anywhere_says_subfolders_were_searched(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(EmbeddingFormatError, match="no embedding files here or in its subfolders"):
        import_path(tmp_path / "empty")


def test_a_link_back_up_the_folder_tree_is_read_once(tmp_path):
    top = tmp_path / "top"
    write(top / "sub", "cat")
    os.symlink(top, top / "sub" / "loop")
    assert [e.name for e in import_path(top)] == ["cat"]


# --- pickles in Python's default protocol (F6) ---
class _SystemCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _zip_with_data_pkl(data_pkl: bytes) -> bytes:
    """A torch zip file whose data.pkl is replaced, as a hand-made attack would be."""
    buffer = io.BytesIO()
    torch.save({"x": 1}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            target.writestr(item, data_pkl if item.filename.endswith("data.pkl") else source.read(item))
    return out.getvalue()


@pytest.mark.parametrize("container", ["raw", "zip"])
@pytest.mark.parametrize("protocol", [4, 5])
def test_a_default_protocol_pickle_that_runs_code_is_refused_as_unsafe_not_corrupt(
    tmp_path, container, protocol
):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"string_to_param": {"*": _SystemCall(f"touch {marker}")}}, protocol=protocol)
    path = tmp_path / "evil.bin"
    path.write_bytes(data if container == "raw" else _zip_with_data_pkl(data))
    with pytest.raises(
        UnsafePickleError, match=r"refused: this pickle wants to run code.*\(it imports (posix|os)\.system\)"
    ):
        import_path(path)
    assert not marker.exists()


def test_a_default_protocol_pickle_of_plain_data_is_not_called_malicious(tmp_path):
    path = tmp_path / "plain.bin"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))  # torch's safe loader reads no FRAME opcode
    with pytest.raises(EmbeddingFormatError) as caught:
        import_path(path)
    assert not isinstance(caught.value, UnsafePickleError) and "nothing was executed" in str(caught.value)


# --- truncated torch zips (polish 6) ---
@pytest.mark.parametrize("cut", ["half", "end"])
def test_a_cut_off_torch_zip_says_truncated_in_whole_words(tmp_path, cut):
    whole = io.BytesIO()
    torch.save({"string_to_param": {"*": vec(2, 768)}, "name": "x"}, whole)
    data = whole.getvalue()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-30])
    with pytest.raises(EmbeddingFormatError) as caught:
        import_path(path)
    message = str(caught.value)
    assert "the file is truncated (it ends early" in message
    assert "Errno" not in message and "there is a high" not in message


# --- the same file given twice (F7) ---
def test_the_same_file_given_twice_or_inside_a_given_folder_is_imported_once(
    tmp_path, capsys, tokensmith_home
):
    path = write(tmp_path / "in", "cat")
    code, out, _ = run(capsys, "import", path, tmp_path / "in" / "." / "cat.safetensors", tmp_path / "in")
    assert (code, out.split()) == (EXIT_OK, ["cat"])
    (tmp_path / "pair").mkdir()
    torch.save({"<xl>": vec(1, 768)}, tmp_path / "pair" / "learned_embeds.bin")
    torch.save({"<xl>": vec(1, 1280)}, tmp_path / "pair" / "learned_embeds_2.bin")
    code, out, _ = run(capsys, "import", tmp_path / "pair", tmp_path / "pair" / "learned_embeds.bin")
    assert (code, out.split()) == (EXIT_OK, ["xl"])


def test_different_files_holding_one_name_are_refused_naming_the_files(tmp_path, capsys, tokensmith_home):
    first = write(tmp_path / "a", "cat", seed=1)
    second = write(tmp_path / "b", "Cat", seed=2)
    code, _, err = run(capsys, "import", first, second)
    assert code == EXIT_ERROR and "2 files hold an embedding named <cat> / <Cat>" in err
    assert f"{first} (<cat>)" in err and f"{second} (<Cat>)" in err
    assert Store.for_home(tokensmith_home).names() == []


# --- a stored file that no longer reads is not a name clash (polish 7) ---
def test_importing_over_a_corrupted_stored_file_says_it_is_corrupted_and_force_repairs_it(
    tmp_path, capsys, tokensmith_home
):
    path = write(tmp_path, "cat")
    run(capsys, "import", path)
    stored = Store.for_home(tokensmith_home).path("cat")
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte of tensor data: the header's sha256 no longer matches
    stored.write_bytes(bytes(data))
    code, _, err = run(capsys, "import", path)
    assert code == EXIT_ERROR and "'cat' is stored, but the stored file cannot be read" in err
    assert "corrupted" in err and "--force replaces it" in err and "different vectors" not in err
    code, _, _ = run(capsys, "import", path, "--force")
    assert code == EXIT_OK and Store.for_home(tokensmith_home).holds(import_path(path)[0])


# --- the doctor's finer warnings (polish 8) ---
def test_the_doctor_warns_about_zero_vectors(tmp_path):
    zero = save_canonical(Embedding("z", {"emb_params": torch.zeros(2, 64)}), tmp_path / "z.safetensors")
    assert any("every vector is zero" in w for w in diagnose(zero).warnings)
    padded = torch.cat([vec(1, 64), torch.zeros(1, 64)])
    pad = save_canonical(Embedding("p", {"emb_params": padded}), tmp_path / "p.safetensors")
    assert any("vector 2 of 2 is zero" in w for w in diagnose(pad).warnings)  # counted from 1
    assert not any("zero" in w for w in diagnose(write(tmp_path, "fine", width=64)).warnings)


def test_the_doctor_says_when_clip_l_and_clip_g_look_swapped(tmp_path):
    from test_embeddings_doctor import fake_model

    path = tmp_path / "xl.safetensors"
    safetensors.torch.save_file({"clip_l": vec(1, 48), "clip_g": vec(1, 32)}, str(path))
    report = diagnose(path, fake_model(clip_l=32, clip_g=48))
    assert report.fit == "no" and any("look swapped" in line for line in report.lines)
    assert not any("swapped" in line for line in diagnose(path, fake_model(clip_l=40, clip_g=56)).lines)


def test_the_doctor_reports_every_file_of_a_folder(tmp_path, capsys):
    write(tmp_path / "f", "cat", width=64)
    write(tmp_path / "f" / "sub", "dog", width=64, seed=1)
    (tmp_path / "f" / "junk.pt").write_bytes(b"\x80\x02junk")
    reports = diagnose_each(tmp_path / "f")
    assert [(os.path.basename(r.path), r.fit) for r in reports] == [
        ("cat.safetensors", "unknown"),
        ("junk.pt", "unreadable"),
        ("dog.safetensors", "unknown"),
    ]
    code, out, _ = run(capsys, "doctor", tmp_path / "f", "--json")
    assert code == EXIT_ERROR and [r["fit"] for r in json.loads(out)] == ["unknown", "unreadable", "unknown"]
    code, out, _ = run(capsys, "doctor", tmp_path / "f" / "sub")
    assert code == EXIT_OK and out.startswith("'dog'")  # one embedding: the report as for a file
    code, out, _ = run(capsys, "doctor", tmp_path / "f" / "sub", "--json")
    assert code == EXIT_OK and [r["fit"] for r in json.loads(out)] == ["unknown"]  # a folder: a list, always


# --- 1-D vectors (polish 9) ---
def test_a_1d_emb_params_safetensors_reads_as_one_vector_as_a1111_does(tmp_path):
    path = tmp_path / "one.safetensors"
    safetensors.torch.save_file({"emb_params": vec(1, 768)[0]}, str(path))
    (emb,) = import_path(path)
    assert emb.widths == {"emb_params": 768} and torch.equal(emb.vectors["emb_params"], vec(1, 768))


# --- A1111 exports carry our metadata (polish 10) ---
def a1111_reads(data: dict) -> tuple[int, int, object]:
    """A1111's create_embedding_from_data for a string_to_param dict (the part that reads keys)."""
    param_dict = data["string_to_param"]
    param_dict = getattr(param_dict, "_parameters", param_dict)
    assert len(param_dict) == 1, "embedding file has multiple terms in it"
    vec_ = next(iter(param_dict.items()))[1].detach().to(dtype=torch.float32)
    return vec_.shape[0], vec_.shape[-1], data.get("step")


@pytest.mark.parametrize("fmt", ["a1111-pt", "a1111-png"])
def test_a1111_exports_keep_the_family_and_provenance_and_the_vectors_bit_identical(tmp_path, fmt):
    meta = {"family": "demo", "init": "triangle", "steps": "300", "trainer": json.dumps({"lr": 0.005})}
    tri = Embedding("tri", {"emb_params": vec(3, 64)}, meta)
    out = tmp_path / ("tri.pt" if fmt == "a1111-pt" else "tri.png")
    export(tri, fmt, out)
    (again,) = import_path(out)
    assert torch.equal(again.vectors["emb_params"], tri.vectors["emb_params"])
    assert again.family == "demo" and again.meta["init"] == "triangle" and again.meta["steps"] == "300"
    assert json.loads(again.meta["trainer"]) == {"lr": 0.005}
    if fmt == "a1111-pt":
        assert a1111_reads(torch.load(out, weights_only=True)) == (3, 64, 300)


def test_an_a1111_dicts_metadata_is_taken_only_as_strings_and_a_family_only_where_widths_allow(tmp_path):
    data = {
        "string_to_param": {"*": vec(1, 768)},
        "tokensmith": {"family": "sd2", "init": "cat", "sha256": "forged", "bad": 3},
    }
    torch.save(data, tmp_path / "x.pt")
    (emb,) = import_path(tmp_path / "x.pt")
    assert emb.family == "sd1" and emb.meta["init"] == "cat" and "bad" not in emb.meta
    assert "sha256" not in emb.meta


def test_an_sdxl_a1111_export_still_holds_only_tensors(tmp_path):
    xl = Embedding("xl", {"clip_l": vec(1, 768), "clip_g": vec(1, 1280)}, {"init": "x"})
    export(xl, "a1111-pt", tmp_path / "xl.pt")
    assert sorted(torch.load(tmp_path / "xl.pt", weights_only=True)) == ["clip_g", "clip_l"]


def another_process_stores(monkeypatch, home, when: str, stored: str):
    """While an import runs, just before it stores `when`, another process stores other vectors as `stored`
    (between two runs of the import's batch lock, where another writer gets in). Returns the real put."""
    from embeddings.storebatch import StoreBatch

    put = StoreBatch.put

    def other_first(self, emb, **kwargs):
        if emb.name == when:
            self.release()
            Store.for_home(home).put(Embedding(stored, {"emb_params": vec(2, 64, seed=9)}))
        return put(self, emb, **kwargs)

    monkeypatch.setattr(StoreBatch, "put", other_first)
    return put


def test_an_import_that_loses_a_name_to_another_process_says_so_and_how_to_replace_it(
    tmp_path, capsys, tokensmith_home, monkeypatch
):
    from embeddings.storebatch import StoreBatch

    write(tmp_path / "in", "a", width=64, seed=1)
    write(tmp_path / "in", "b", width=64, seed=2)
    put = another_process_stores(monkeypatch, tokensmith_home, "b", "b")
    code, _, err = run(capsys, "import", tmp_path / "in")
    assert code == EXIT_ERROR
    assert "an embedding named 'b' was stored by another process while this import ran" in err
    assert "run the same command with --force to finish and replace it" in err
    assert "run the same command again to finish" not in err  # which would be refused: 'b' differs
    monkeypatch.setattr(StoreBatch, "put", put)
    code, _, err = run(capsys, "import", tmp_path / "in", "--force")  # as advised
    assert code == EXIT_OK, err
    stored = Store.for_home(tokensmith_home).get("b")
    assert torch.equal(stored.vectors["emb_params"], vec(2, 64, seed=2))


def test_an_import_refused_by_a_case_twin_stored_meanwhile_gives_that_reason_not_force(
    tmp_path, capsys, tokensmith_home, monkeypatch
):
    write(tmp_path / "in", "a", width=64, seed=1)
    write(tmp_path / "in", "Neg", width=64, seed=2)
    another_process_stores(monkeypatch, tokensmith_home, "Neg", "neg")
    code, _, err = run(capsys, "import", tmp_path / "in")
    assert code == EXIT_ERROR and "only in letter case" in err, err
    assert "stored by another process" not in err and "--force" not in err.split("only in letter case")[1]
