"""The store: put/get/list/rename/delete/restore, name rules, previews, and writers in several processes."""

import multiprocessing

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from embeddings import Embedding, Store, StoreError, safe_name, validate_name
from embeddings.errors import EmbeddingFormatError


def emb(name="cat", value=1.0, n=2, width=768):
    return Embedding(name, {"emb_params": torch.full((n, width), value)}, {"init": "cat"})


@pytest.fixture
def store(tokensmith_home):
    return Store.for_home(tokensmith_home)


def test_put_get_round_trip_and_layout(store, tokensmith_home):
    path = store.put(emb())
    assert path == tokensmith_home / "embeddings" / "cat.safetensors"
    got = store.get("cat")
    assert torch.equal(got.vectors["emb_params"], emb().vectors["emb_params"])
    assert got.meta["init"] == "cat" and store.names() == ["cat"] and store.exists("cat")


def test_put_refuses_a_layout_no_reader_accepts(store):
    mixed = Embedding("mixed", {"emb_params": torch.zeros(1, 768), "clip_l": torch.zeros(1, 768)})
    with pytest.raises(EmbeddingFormatError, match="canonical file holds emb_params or clip_l"):
        store.put(mixed)
    assert store.names() == []


def test_existing_name_is_never_overwritten_without_overwrite(store):
    store.put(emb(value=1.0))
    with pytest.raises(StoreError, match=r"already exists.*--force"):
        store.put(emb(value=2.0))
    assert float(store.get("cat").vectors["emb_params"][0, 0]) == 1.0
    store.put(emb(value=2.0), overwrite=True)
    assert float(store.get("cat").vectors["emb_params"][0, 0]) == 2.0


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../x",
        "a/b",
        "a\\b",
        "..",
        ".hidden",
        "a..b",
        "x" * 65,
        "sp ace",
        "p.preview",
        "CON",
        "nul.x",
        "Com1",
    ],
)
def test_unsafe_names_are_refused_with_the_rule(store, bad):
    with pytest.raises(StoreError, match=r"letters, digits|may not end|device name"):
        validate_name(bad)
    with pytest.raises((StoreError, EmbeddingFormatError)):
        store.put(emb().with_name(bad))
    assert not list(store.root.parent.parent.glob("**/*.safetensors"))


def test_safe_name_makes_valid_names_from_any_text():
    for text in ["bad hands (v5)", "../../etc/passwd", "...", "ü", "a" * 200, "x.preview", "-lead", "aux.v2"]:
        assert validate_name(safe_name(text))
    assert safe_name("prn") == "emb-prn" and validate_name("console") == "console"
    assert safe_name("bad hands (v5)") == "bad-hands-v5"
    assert safe_name("日本") != safe_name("中国") and safe_name("日本").startswith("emb-")


@given(st.text(max_size=80))
def test_safe_name_always_gives_a_valid_name(text):
    assert validate_name(safe_name(text))


def test_a_failed_write_leaves_neither_a_file_nor_a_temp_file(store, monkeypatch):
    import embeddings.files as files

    store.put(emb("cat", value=1.0))

    def crash(path, data, *, overwrite=True):
        def half(tmp):
            tmp.write_bytes(data[: len(data) // 2])
            raise OSError("disk full")

        return files.atomic_write(path, half, overwrite=overwrite)

    monkeypatch.setattr("embeddings.storewrites.atomic_write_bytes", crash)
    with pytest.raises(OSError, match="disk full"):
        store.put(emb("dog"))
    with pytest.raises(OSError, match="disk full"):
        store.put(emb("cat", value=2.0), overwrite=True)
    assert store.names() == ["cat"] and float(store.get("cat").vectors["emb_params"][0, 0]) == 1.0
    assert [p.name for p in store.root.iterdir()] == ["cat.safetensors"]


def test_list_reads_headers_and_finds_previews(store, monkeypatch):
    store.put(emb("a"), preview=Image.new("RGB", (8, 8), "red"))
    store.put(Embedding("b", {"clip_l": torch.zeros(3, 768), "clip_g": torch.zeros(3, 1280)}))
    (store.root / "notes.txt").write_text("not an embedding")
    (store.root / "broken.safetensors").write_bytes(b"garbage!")
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("tensor data read"))
    problems = []
    entries = {e.name: e for e in store.list(problems=problems)}
    assert set(entries) == {"a", "b"}
    assert [p.name for p, _ in problems] == ["broken.safetensors"] and "claims" in problems[0][1]
    assert (entries["a"].family, entries["a"].num_vectors, entries["a"].widths) == (
        "sd1",
        2,
        {"emb_params": 768},
    )
    assert entries["a"].preview == store.preview_path("a") and entries["b"].preview is None
    assert entries["b"].family == "sdxl" and entries["b"].meta["num_vectors"] == "3"
    assert list(entries["b"].widths.items()) == [("clip_l", 768), ("clip_g", 1280)]  # clip_l first
    assert Image.open(entries["a"].preview).size == (8, 8)


def test_rename_moves_file_preview_and_header_name(store):
    store.put(emb("a"), preview=Image.new("RGB", (4, 4)))
    store.put(emb("taken", value=2.0))
    with pytest.raises(StoreError, match="already exists"):
        store.rename("a", "taken")
    with pytest.raises(StoreError, match="already called"):
        store.rename("a", "a")
    store.rename("a", "b")
    assert store.names() == ["b", "taken"] and store.get("b").meta["name"] == "b"
    assert store.preview_path("b").is_file() and not store.preview_path("a").exists()
    with pytest.raises(StoreError, match="no embedding named 'a'"):
        store.get("a")


def test_names_differing_only_in_case_are_refused(store):
    # CLIP lowercases prompts, so <Cat> and <cat> are one token (and one file on macOS/Windows)
    store.put(emb("cat", value=1.0))
    for attempt in (lambda: store.put(emb("Cat")), lambda: store.put(emb("CAT"), overwrite=True)):
        with pytest.raises(StoreError, match="only in letter case"):
            attempt()
    store.put(emb("dog"))
    with pytest.raises(StoreError, match="only in letter case"):
        store.rename("dog", "CAT")
    store.rename("cat", "Cat")  # changing the case of one embedding's own name is fine
    assert store.names() == ["Cat", "dog"]
    store.delete("Cat")
    store.put(emb("cAt", value=2.0))
    with pytest.raises(StoreError, match="only in letter case"):
        store.restore("Cat")
    assert float(store.get("cAt").vectors["emb_params"][0, 0]) == 2.0 and store.trashed() == ["Cat"]


def test_delete_goes_to_trash_and_restore_brings_it_back(store):
    store.put(emb("a", value=3.0), preview=Image.new("RGB", (4, 4)))
    store.delete("a")
    assert store.names() == [] and store.trashed() == ["a"]
    store.put(emb("a", value=4.0))
    with pytest.raises(StoreError, match="exists"):
        store.restore("a")
    store.delete("a")  # now the trash holds two; the newest (4.0) comes back first
    store.restore("a")
    assert float(store.get("a").vectors["emb_params"][0, 0]) == 4.0
    store.delete("a")
    store.restore("a")
    assert float(store.get("a").vectors["emb_params"][0, 0]) == 4.0
    assert store.trashed() == ["a"]
    with pytest.raises(StoreError, match="not in the trash"):
        store.restore("zzz")


def test_missing_name_suggests_close_ones(store):
    store.put(emb("MyCat"))
    with pytest.raises(StoreError, match="did you mean MyCat"):
        store.get("mycat")


# --- several processes at once ---
def _hammer(root, worker, rounds, queue):
    torch.set_num_threads(1)
    store = Store(root)
    outcome = {"created": 0, "refused": 0}
    for i in range(rounds):
        value = float(worker * 1000 + i)
        store.put(emb("shared", value=value, n=4), overwrite=True)
        store.put(emb(f"own-{worker}-{i}", value=value))
        try:
            store.put(emb("first-wins", value=value))
            outcome["created"] += 1
        except StoreError:
            outcome["refused"] += 1
    queue.put(outcome)


def test_concurrent_writers_never_corrupt_or_lose_files(store):
    workers, rounds = 4, 15
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = [context.Process(target=_hammer, args=(store.root, w, rounds, queue)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    outcomes = [queue.get(timeout=5) for _ in procs]
    assert sum(o["created"] for o in outcomes) == 1  # exactly one process created "first-wins"
    assert sum(o["refused"] for o in outcomes) == workers * rounds - 1
    names = store.names()
    assert len(names) == 2 + workers * rounds
    for name in names:  # every file is whole: loads and matches its recorded sha256
        loaded = store.get(name)
        assert loaded.vectors["emb_params"].unique().numel() == 1
    assert not [p for p in store.root.iterdir() if p.name.endswith(".tmp")]


# --- failures and kills halfway ---
def half_renamed(store, old, new, *, preview_moved):
    """The store as a kill during `rename(old, new)` leaves it: `new` created, `old` not yet removed."""
    from embeddings.canonical import canonical_bytes
    from embeddings.files import atomic_write_bytes

    atomic_write_bytes(store.path(new), canonical_bytes(store.get(old).with_name(new)), overwrite=False)
    if preview_moved:
        store.preview_path(old).replace(store.preview_path(new))


@pytest.mark.parametrize("preview_moved", [False, True])
@pytest.mark.parametrize("new", ["Tri", "tri2"])
def test_running_a_killed_rename_again_finishes_it(store, new, preview_moved):
    store.put(emb("tri", value=3.0), preview=Image.new("RGB", (4, 4)))
    half_renamed(store, "tri", new, preview_moved=preview_moved)
    assert {e.name for e in store.list()} == {"tri", new}  # listing still works
    assert store.rename("tri", new) == store.path(new)
    assert store.names() == [new] and store.get(new).meta["name"] == new
    assert float(store.get(new).vectors["emb_params"][0, 0]) == 3.0
    assert store.preview_path(new).is_file() and not store.preview_path("tri").exists()


def test_rename_still_refuses_a_target_that_is_not_its_unfinished_copy(store):
    store.put(emb("a", value=1.0))
    store.put(emb("b", value=1.0).with_meta(init="dog"))  # same vectors, other metadata
    with pytest.raises(StoreError, match="'b' already exists"):
        store.rename("a", "b")
    store.put(emb("c", value=5.0), preview=Image.new("RGB", (4, 4)))
    half_renamed(store, "c", "d", preview_moved=False)
    store.set_preview("d", Image.new("RGB", (2, 2)))  # both have a preview: not what a kill leaves
    with pytest.raises(StoreError, match="'d' already exists"):
        store.rename("c", "d")
    assert store.names() == ["a", "b", "c", "d"]


def test_holds_compares_vectors_not_metadata(store):
    store.put(emb("cat", value=1.0))
    assert store.holds(emb("cat", value=1.0).with_meta(source_file="elsewhere.pt"))
    assert not store.holds(emb("cat", value=2.0)) and not store.holds(emb("dog"))


def test_a_file_where_the_store_folder_should_be_is_an_error_not_an_empty_store(store, tokensmith_home):
    tokensmith_home.mkdir()
    store.root.write_text("")
    for attempt in (store.names, store.list, lambda: store.put(emb()), lambda: store.get("cat")):
        with pytest.raises(StoreError, match=r"embeddings is a file, not a folder; move or rename that file"):
            attempt()
    inside = Store(store.root / "deeper" / "embeddings")
    with pytest.raises(StoreError, match=r"cannot be made: .*embeddings is a file"):
        inside.put(emb())


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (PermissionError(13, "Permission denied"), "is not writable: check its permissions"),
        (OSError(30, "Read-only file system"), "is not writable"),
        (OSError(28, "No space left on device"), "the disk is full"),
    ],
)
def test_write_errors_name_the_target_not_the_temp_file(store, monkeypatch, error, says):
    import embeddings.files as files

    store.put(emb("cat", value=1.0), preview=Image.new("RGB", (4, 4)))

    def failing(path, data, *, overwrite=True):
        def write(tmp):
            error.filename = str(tmp)  # as the OS reports it: the hidden temp file
            raise error

        return files.atomic_write(path, write, overwrite=overwrite)

    monkeypatch.setattr("embeddings.storewrites.atomic_write_bytes", failing)  # put's write
    monkeypatch.setattr("embeddings.store.atomic_write_bytes", failing)  # rename's
    for attempt, target in (
        (lambda: store.put(emb("dog")), "dog.safetensors"),
        (lambda: store.put(emb("cat", value=2.0), overwrite=True), "cat.safetensors"),
        (lambda: store.rename("cat", "kitty"), "kitty.safetensors"),
    ):
        with pytest.raises(OSError, match=says) as caught:
            attempt()
        assert f"cannot write {store.root / target}" in str(caught.value) and ".tmp" not in str(caught.value)
        assert caught.value.errno == error.errno
    assert sorted(p.name for p in store.root.iterdir()) == ["cat.preview.png", "cat.safetensors"]
    assert float(store.get("cat").vectors["emb_params"][0, 0]) == 1.0


def test_a_rename_onto_the_same_file_never_removes_it(store):
    """On a case-insensitive filesystem 'Cat' is the file 'cat' itself (a link plays that here): it is not
    what a killed rename leaves, so the rename must not finish by removing the old name."""
    store.put(emb("cat", value=4.0))
    store.path("kitty").symlink_to(store.path("cat").name)  # 'kitty' resolves to the very same file
    with pytest.raises(StoreError, match="'kitty' already exists"):
        store.rename("cat", "kitty")
    assert float(store.get("cat").vectors["emb_params"][0, 0]) == 4.0


def test_a_copy_that_still_carries_the_old_name_is_not_an_unfinished_rename(store):
    store.put(emb("tri", value=3.0))
    store.path("tri2").write_bytes(store.path("tri").read_bytes())  # header name 'tri': no rename wrote it
    with pytest.raises(StoreError, match="'tri2' already exists"):
        store.rename("tri", "tri2")
    assert store.exists("tri")


def test_a_store_folder_that_is_a_link_to_nothing_is_named(store, tokensmith_home):
    tokensmith_home.mkdir()
    store.root.symlink_to(tokensmith_home / "unmounted-disk")
    with pytest.raises(StoreError, match=r"is a link to .*unmounted-disk, which does not exist"):
        store.put(emb("cat"))
    with pytest.raises(StoreError, match="which does not exist"):
        store.list()


def test_a_restore_killed_after_its_copy_finishes_when_run_again(store, monkeypatch):
    store.put(emb("cat", value=6.0), preview=Image.new("RGB", (4, 4)))
    store.delete("cat")
    monkeypatch.setattr("shutil.rmtree", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # the kill: copied back and preview moved, trash not yet removed
        store.restore("cat")
    monkeypatch.undo()
    assert store.restore("cat") == store.path("cat")
    assert float(store.get("cat").vectors["emb_params"][0, 0]) == 6.0 and store.preview_path("cat").is_file()
    with pytest.raises(StoreError, match="not in the trash"):  # the trash entry is gone: finished
        store.restore("cat")
    store.delete("cat")
    store.put(emb("cat", value=7.0))  # another embedding took the name: still refused
    with pytest.raises(StoreError, match="an embedding of that name exists"):
        store.restore("cat")
