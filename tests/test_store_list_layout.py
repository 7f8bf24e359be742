"""`list` (headers only) and `load_canonical` (what show, nearest and generate read) agree on which files in
the store are embeddings: a file copied in by hand that the loaders refuse is skipped by the listing with the
reason, never listed as a normal embedding (review finding: list/show inconsistent)."""

import json
import re
import struct

import pytest
import safetensors.torch
import torch
from clirun import run

from embeddings import Embedding, EmbeddingFormatError, Store, load_canonical
from embeddings.value import MAX_VECTORS
from studio.cli import EXIT_OK


def vec(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def tensors(**named) -> bytes:
    return safetensors.torch.save(named)


def raw(entries: dict, data: bytes) -> bytes:
    """A safetensors file written byte by byte (for layouts the library refuses to write)."""
    blob = json.dumps(entries).encode()
    return struct.pack("<Q", len(blob)) + blob + data


F32_1x2 = {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}

# file stem -> its bytes: files the loaders read ...
READABLE = {
    "one-vector-1d": lambda: tensors(emb_params=vec(768)),  # A1111 reads (dim,) as one vector
    "kohya-fp16": lambda: tensors(emb_params=vec(8, 768, dtype=torch.float16)),
    "sdxl-pair": lambda: tensors(clip_l=vec(2, 768), clip_g=vec(2, 1280)),
}
# ... and files they refuse, with a word of the reason
REFUSED = {
    "diffusers-renamed": (lambda: tensors(**{"<mytoken>": vec(1, 768)}), "use `tokensmith import`"),
    "mixed-keys": (lambda: tensors(emb_params=vec(2, 768), clip_g=vec(2, 1280)), "use `tokensmith import`"),
    "extra-key": (lambda: tensors(emb_params=vec(2, 768), step=torch.ones(1)), "use `tokensmith import`"),
    "no-tensors": (lambda: tensors(), "use `tokensmith import`"),
    "integers": (lambda: tensors(emb_params=torch.ones(2, 768, dtype=torch.int64)), "not a floating-point"),
    "booleans": (lambda: tensors(emb_params=torch.ones(2, 768, dtype=torch.bool)), "not a floating-point"),
    "three-d": (lambda: tensors(emb_params=vec(2, 3, 768)), "3-D; expected (n, dim)"),
    "scalar": (lambda: tensors(emb_params=torch.tensor(1.0)), "0-D; expected (n, dim)"),
    "no-vectors": (lambda: tensors(emb_params=vec(0, 768)), "is not an embedding"),
    "too-many-vectors": (lambda: tensors(emb_params=vec(MAX_VECTORS + 1, 4)), "is not an embedding"),
    "counts-disagree": (lambda: tensors(clip_l=vec(2, 768), clip_g=vec(3, 1280)), "disagree"),
    "bytes-short": (lambda: raw({"emb_params": {**F32_1x2, "data_offsets": [0, 4]}}, b"\0" * 4), "corrupted"),
    "bytes-trailing": (lambda: raw({"emb_params": F32_1x2}, b"\0" * 16), "corrupted"),
    "bytes-overlap": (lambda: raw({"clip_l": F32_1x2, "clip_g": F32_1x2}, b"\0" * 8), "corrupted"),
}


def good(store: Store) -> Embedding:
    cat = Embedding("cat", {"emb_params": vec(2, 768)}, {"init": "cat"})
    store.put(cat)
    return cat


def copy_in(store: Store, stem: str, content: bytes) -> None:
    """A file copied into the store folder by hand."""
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / f"{stem}.safetensors").write_bytes(content)


def listed(store: Store) -> tuple[dict[str, object], dict[str, str]]:
    """(name -> entry, file name -> reason) of the store's listing."""
    problems = []
    entries = {entry.name: entry for entry in store.list(problems=problems)}
    return entries, {path.name: reason for path, reason in problems}


@pytest.fixture
def store(tokensmith_home):
    return Store.for_home(tokensmith_home)


@pytest.mark.parametrize("stem", [*READABLE, *REFUSED])
def test_list_and_load_canonical_agree_on_every_file(store, stem):
    content = READABLE[stem]() if stem in READABLE else REFUSED[stem][0]()
    copy_in(store, stem, content)
    path = store.path(stem)
    entries, problems = listed(store)
    try:
        emb = load_canonical(path)
    except EmbeddingFormatError as exc:
        assert stem in REFUSED and stem not in entries
        assert problems == {path.name: str(exc)}  # the same refusal, word for word
        assert REFUSED[stem][1] in str(exc)
        with pytest.raises(EmbeddingFormatError, match=f"^{re.escape(str(path))}"):
            store.entry(stem)  # show --json and the studio's details panel refuse it too
        return
    assert stem in READABLE and not problems
    entry = entries[stem]
    assert (entry.family, entry.num_vectors, entry.widths) == (emb.family, emb.num_vectors, emb.widths)
    assert list(entry.widths) == list(emb.widths)  # in the same order: clip_l before clip_g
    assert store.entry(stem).to_json() == entry.to_json()


def test_a_store_with_one_good_file_lists_only_it_and_names_each_bad_one(store, monkeypatch):
    good(store)
    for stem, (content, _) in REFUSED.items():
        copy_in(store, stem, content())
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("tensor data read"))
    entries, problems = listed(store)
    assert list(entries) == ["cat"] and entries["cat"].family == "sd1"
    assert sorted(problems) == sorted(f"{stem}.safetensors" for stem in REFUSED)
    for stem, (_, words) in REFUSED.items():
        assert words in problems[f"{stem}.safetensors"]


def test_a_renamed_diffusers_file_is_skipped_with_the_import_way_out_not_listed_as_w768(store, capsys):
    """The review's case: `{"<mytoken>": (1, 768)}` copied in was listed as 'mytoken w768 1v', which show and
    generate refused; now list skips it, and `tokensmith import` (its way out) converts it."""
    good(store)
    copy_in(store, "mytoken", tensors(**{"<mytoken>": vec(1, 768)}))
    copy_in(store, "ints", tensors(emb_params=torch.ones(2, 768, dtype=torch.int64)))
    code, out, err = run(capsys, "list")
    assert code == EXIT_OK and [line.split()[0] for line in out.splitlines()] == ["cat"]
    skipped = {line.split()[4]: line for line in err.splitlines() if "warning: skipped" in line}
    assert sorted(skipped) == ["ints.safetensors:", "mytoken.safetensors:"]
    assert "not the canonical layout" in skipped["mytoken.safetensors:"]
    assert "`tokensmith import`" in skipped["mytoken.safetensors:"]
    assert "not a floating-point type" in skipped["ints.safetensors:"]
    assert "`tokensmith rm ints` moves it to the trash" in skipped["ints.safetensors:"]  # no import for that
    code, out, _ = run(capsys, "list", "--json")
    assert [entry["name"] for entry in json.loads(out)] == ["cat"]
    code, out, _ = run(capsys, "import", store.path("mytoken"), "--name", "mytoken-sd1")
    assert code == EXIT_OK and store.get("mytoken-sd1").family == "sd1"


def test_the_library_page_lists_the_good_file_and_warns_of_a_refused_one(store):
    from apppage import open_page

    good(store)
    copy_in(store, "mixed-keys", REFUSED["mixed-keys"][0]())
    at = open_page("views/library.py")
    names = [md.value for md in at.markdown if md.value.startswith("**&lt;")]
    assert names == ["**&lt;cat&gt;**"]
    warning = " ".join(w.value for w in at.warning)
    assert "mixed-keys.safetensors" in warning and "not the canonical layout" in warning
    assert "import the file on the Library page" in warning and "`tokensmith" not in warning


def test_the_listed_way_out_of_a_file_nothing_converts_clears_it(store, capsys):
    """An integer file cannot be imported: `list` names `rm`, and that command takes it to the trash."""
    good(store)
    copy_in(store, "ints", tensors(emb_params=torch.ones(2, 768, dtype=torch.int64)))
    code, _, _ = run(capsys, "rm", "ints")
    assert code == EXIT_OK and not (store.root / "ints.safetensors").exists()
    code, _, err = run(capsys, "list")
    assert code == EXIT_OK and "skipped" not in err
