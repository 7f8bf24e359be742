"""Two writers of one store at once: each race is replayed step by step, the other writer (another process:
an import, a training run's store write, a second `rm`) made to act at the one point where it used to slip
in, in a thread with its own Store (a flock taken through another descriptor excludes it as it would another
process)."""

import os
import threading
from pathlib import Path

import pytest

from embeddings import Store, StoreError, canonical, trash
from embeddings import store as store_module
from embeddings.errors import EmbeddingFormatError
from embeddings.files import PREVIEW_SUFFIX
from tests.storerace import GREEN, RED, Meanwhile, after_first_call, colour, emb, value


@pytest.fixture
def store(tokensmith_home):
    return Store.for_home(tokensmith_home)


@pytest.fixture
def other(tokensmith_home):
    """The other writer's store: the same folder, its own lock descriptor."""
    return Store.for_home(tokensmith_home)


# --- rename (review finding 1) ---


def test_a_rename_never_removes_what_an_import_stored_under_the_old_name_meanwhile(store, other, monkeypatch):
    """`import --force` of 'cat' lands right after the rename has read 'cat': it waits for the rename, and
    then stores its 'cat' beside the renamed one. Nothing is removed unread."""
    store.put(emb("cat", 1.0))
    meanwhile = Meanwhile(monkeypatch)
    after_first_call(
        monkeypatch,
        store_module,
        "load_canonical",
        lambda: meanwhile.run(lambda: other.put(emb("cat", 2.0), overwrite=True)),
    )
    store.rename("cat", "kitty")
    assert not any(isinstance(r, Exception) for r in meanwhile.join())
    assert (value(store.get("kitty")), value(store.get("cat"))) == (1.0, 2.0)
    assert store.trashed() == []


def test_of_two_renames_of_one_name_exactly_one_wins(store, other, monkeypatch):
    store.put(emb("cat", 1.0), preview=RED)
    meanwhile = Meanwhile(monkeypatch)
    after_first_call(
        monkeypatch,
        store_module,
        "load_canonical",
        lambda: meanwhile.run(lambda: other.rename("cat", "tiger")),
    )
    store.rename("cat", "kitty")
    (loser,) = meanwhile.join()
    assert isinstance(loser, StoreError) and "no embedding named 'cat'" in str(loser)
    assert store.names() == ["kitty"] and value(store.get("kitty")) == 1.0
    assert colour(store.preview_path("kitty")) == (255, 0, 0)


# --- reading while another process writes (review finding 2) ---


def test_a_read_while_the_file_is_replaced_gets_one_whole_file_not_a_corrupted_one(store, other, monkeypatch):
    """The header is read, then `import --force` replaces the file: the tensors come from the file whose
    header was read (old, whole), never from the new one ('the file is corrupted')."""
    store.put(emb("x", 1.0))
    after_first_call(
        monkeypatch, canonical, "canonical_shapes", lambda: other.put(emb("x", 2.0), overwrite=True)
    )
    assert value(store.get("x")) == 1.0
    assert value(store.get("x")) == 2.0  # the next read sees the new file


def test_a_read_while_the_file_is_renamed_away_gets_the_file_it_opened(store, other, monkeypatch):
    store.put(emb("x", 1.0))
    after_first_call(monkeypatch, canonical, "canonical_shapes", lambda: other.rename("x", "y"))
    assert value(store.get("x")) == 1.0
    assert store.names() == ["y"]


def test_an_embedding_removed_before_its_read_is_not_stored_rather_than_unreadable(store, other, monkeypatch):
    """`rm x` lands between the store finding 'x' and opening it: 'no embedding named', as for any name the
    store does not hold, not 'x.safetensors: no such file'."""
    store.put(emb("x", 1.0))
    after_first_call(monkeypatch, store, "_require", lambda: other.delete("x"))
    with pytest.raises(StoreError, match=r"no embedding named 'x' in .*`tokensmith list` shows them"):
        store.get("x")


def test_a_file_cut_short_in_place_while_it_is_read_says_so(store, monkeypatch):
    """Not a store write (those replace the file whole): an editor truncating the file in place."""
    path = store.put(emb("x", 1.0))
    after_first_call(monkeypatch, canonical, "canonical_shapes", lambda: os.truncate(path, 100))
    with pytest.raises(EmbeddingFormatError, match=r"x\.safetensors: the file ended while it was read"):
        store.get("x")


def test_listing_still_reads_headers_only(store, monkeypatch):
    """`load_canonical` reads the file whole now (safetensors.torch.load of its bytes): `list` must still
    touch no tensor data, by either of safetensors' loaders."""
    import safetensors.torch

    store.put(emb("a", 1.0))
    for loader in ("load", "load_file"):
        monkeypatch.setattr(safetensors.torch, loader, lambda *a, **k: pytest.fail("tensor data read"))
    assert [e.name for e in store.list()] == ["a"]


# --- restore (review finding 5) ---


def test_a_restore_that_loses_its_name_to_an_import_says_rename_it_first(store, other, monkeypatch):
    """`import` stores 'cat' after the restore checked the name was free, before it took the lock."""
    store.put(emb("cat", 1.0))
    store.delete("cat")
    after_first_call(monkeypatch, store, "_locked", lambda: other.put(emb("cat", 2.0)))  # made, not entered
    with pytest.raises(StoreError) as info:
        store.restore("cat")
    assert str(info.value) == (
        "cannot restore 'cat': an embedding of that name exists; rename it first "
        "(`tokensmith rename cat NEW`)"
    )
    assert value(store.get("cat")) == 2.0 and store.trashed() == ["cat"]  # the trash copy stays


def test_a_name_taken_by_a_writer_without_the_lock_is_refused_in_the_same_words(store, monkeypatch):
    """A filesystem without flock: the name is stored between the restore's check and its link."""
    store.put(emb("cat", 1.0))
    store.delete("cat")
    real = trash._bring_back

    def bring_back(trashed: Path, path: Path) -> None:
        path.write_bytes(b"stored meanwhile")
        real(trashed, path)

    monkeypatch.setattr(trash, "_bring_back", bring_back)
    with pytest.raises(StoreError, match=r"^cannot restore 'cat': an embedding of that name exists; rename"):
        store.restore("cat")
    assert store.trashed() == ["cat"]


# --- rm (review finding 6) ---


def after_thumbnail_trashed(monkeypatch, action) -> Meanwhile:
    """`action` run as another process, once `delete` has moved the thumbnail into the trash (and not yet the
    embedding)."""
    meanwhile = Meanwhile(monkeypatch)
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        first = threading.current_thread() is threading.main_thread() and not meanwhile.threads
        if first and str(src).endswith(PREVIEW_SUFFIX) and Path(dst).parent.parent.name == trash.TRASH:
            meanwhile.run(action)

    monkeypatch.setattr(os, "replace", replace)
    return meanwhile


def test_rm_and_a_training_runs_store_write_never_pair_one_embedding_with_anothers_thumbnail(
    store, other, monkeypatch
):
    """`rm x` has moved the thumbnail into the trash when `train --overwrite x` stores its result: the store
    write waits for the rm, so the trash holds the old pair and the store the new pair."""
    store.put(emb("x", 1.0), preview=RED)
    meanwhile = after_thumbnail_trashed(
        monkeypatch, lambda: other.put(emb("x", 2.0), overwrite=True, preview=GREEN)
    )
    folder = store.delete("x")
    assert not any(isinstance(r, Exception) for r in meanwhile.join())
    assert value(store.get("x")) == 2.0 and colour(store.preview_path("x")) == (0, 255, 0)
    assert sorted(p.name for p in folder.iterdir()) == ["x.preview.png", "x.safetensors"]
    assert value(canonical.load_canonical(folder / "x.safetensors")) == 1.0
    assert colour(folder / "x.preview.png") == (255, 0, 0)


def test_two_rms_of_one_name_move_it_once(store, other, monkeypatch):
    store.put(emb("cat", 1.0), preview=RED)
    meanwhile = after_thumbnail_trashed(monkeypatch, lambda: other.delete("cat"))
    folder = store.delete("cat")
    (second,) = meanwhile.join()
    assert isinstance(second, StoreError) and "no embedding named 'cat'" in str(second)
    assert store.trashed() == ["cat"] and list((store.root / trash.TRASH).iterdir()) == [folder]


# --- a training run's store write (review finding 8) ---


def test_a_training_run_that_loses_its_name_to_an_import_says_stored_meanwhile(tmp_path, tokensmith_home):
    """`tokensmith import x.safetensors --name t3` while `train --name t3` ran: not 'by another run'."""
    from types import SimpleNamespace

    from embeddings.errors import TokensmithError
    from trainers.runfolder import RunFolder
    from trainers.storing import store_result

    store = Store.for_home(tokensmith_home)
    Store.for_home(tokensmith_home).put(emb("t3", 1.0))  # the import, while the run trained
    folder = RunFolder(tmp_path / "run")
    with pytest.raises(TokensmithError) as lost:
        store_result(SimpleNamespace(name="t3", overwrite=False), folder, store, emb("t3", 2.0), None, None)
    said = str(lost.value)
    assert said.startswith(
        "an embedding named 't3' was stored meanwhile (by another run or an import); this run's result is "
        f"kept in {folder.final_path}: to store it in place of that one, run `tokensmith train --run-dir "
    )
    assert value(store.get("t3")) == 1.0
