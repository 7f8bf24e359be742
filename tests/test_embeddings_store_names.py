"""The store and the names in its folder: hand-copied files under refused names, letter-case twins under
concurrent writers, case-insensitive look-ups, accents in made names, and the litter of killed writes."""

import os
import shutil
import threading
import time

import pytest
import torch
from clirun import run

from embeddings import Embedding, Store, StoreError, safe_name, save_canonical
from embeddings.files import STALE_TEMP_SECONDS
from studio.cli import EXIT_ERROR, EXIT_OK


def emb(name="cat", value=1.0, n=2, width=768):
    return Embedding(name, {"emb_params": torch.full((n, width), value)}, {"init": "cat"})


@pytest.fixture
def store(tokensmith_home):
    return Store.for_home(tokensmith_home)


def copy_in(store, file_name, value=1.0):
    """A canonical file copied into the store folder by hand, as A1111 users do."""
    store.root.mkdir(parents=True, exist_ok=True)
    return save_canonical(emb(value=value), store.root / file_name)


# --- files under names the rules refuse (F3) ---
def test_list_reports_hand_copied_files_under_refused_names_with_the_way_out(store):
    copy_in(store, "EasyNegative (1).safetensors")
    copy_in(store, "CON.safetensors")
    store.put(emb("ok"))
    problems = []
    assert [e.name for e in store.list(problems=problems)] == ["ok"] and store.names() == ["ok"]
    reasons = {path.name: reason for path, reason in problems}
    assert "`tokensmith rename 'EasyNegative (1)' EasyNegative-1`" in reasons["EasyNegative (1).safetensors"]
    assert (
        "device name on Windows" in reasons["CON.safetensors"]
        and "tokensmith rm CON" in reasons["CON.safetensors"]
    )


def test_a_refused_stem_can_be_renamed_trashed_and_restored_but_not_read_by_its_name(store):
    copy_in(store, "EasyNegative (1).safetensors", value=3.0)
    copy_in(store, "CON.safetensors")
    with pytest.raises(StoreError, match=r"invalid embedding name .*tokensmith rename"):
        store.get("EasyNegative (1)")
    store.rename("EasyNegative (1)", "easyneg")
    assert store.names() == ["easyneg"] and float(store.get("easyneg").vectors["emb_params"][0, 0]) == 3.0
    assert store.get("easyneg").meta["name"] == "easyneg"
    store.delete("CON")
    assert not (store.root / "CON.safetensors").exists() and store.trashed() == ["CON"]
    store.restore("CON")  # the undo of a delete puts back exactly what was there
    assert (store.root / "CON.safetensors").is_file()
    with pytest.raises(StoreError, match="invalid embedding name"):
        store.rename("x/../../etc", "y")  # only an exact file of the folder is accepted, never a path


def test_cli_list_names_refused_stems_and_other_formats_and_rename_fixes_them(store, capsys, tmp_path):
    copy_in(store, "EasyNegative (1).safetensors")
    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}}, store.root / "bad-hands-5.pt")
    code, out, err = run(capsys, "list")
    assert code == EXIT_OK and "EasyNegative" not in out
    assert "skipped EasyNegative (1).safetensors" in err and "tokensmith rename 'EasyNegative (1)'" in err
    assert "not read: bad-hands-5.pt" in err and f"tokensmith import {store.root / 'bad-hands-5.pt'}" in err
    code, out, _ = run(capsys, "doctor", "EasyNegative (1)")
    assert code == EXIT_OK and "`tokensmith rename 'EasyNegative (1)' EasyNegative-1`" in out
    code, out, _ = run(capsys, "rename", "EasyNegative (1)", "EasyNegative-1")
    assert code == EXIT_OK and store.names() == ["EasyNegative-1"]


# --- letter-case twins under concurrent writers (F4) ---
def test_two_writers_cannot_store_case_twins_between_check_and_write(store, monkeypatch):
    from embeddings import storewrites as store_module  # where put writes the file

    real_write = store_module.atomic_write_bytes
    dog_checked = threading.Event()

    def slow_write(path, data, *, overwrite=True):
        if path.name == "dog.safetensors":  # 'dog' has passed its twin check: let 'Dog' try now
            dog_checked.set()
            time.sleep(0.5)
        return real_write(path, data, overwrite=overwrite)

    monkeypatch.setattr(store_module, "atomic_write_bytes", slow_write)
    results = {}

    def put(name):
        try:
            store.put(emb(name))
            results[name] = "ok"
        except StoreError as exc:
            results[name] = str(exc)

    first = threading.Thread(target=put, args=("dog",))
    first.start()
    assert dog_checked.wait(10)
    put("Dog")
    first.join(10)
    assert results["dog"] == "ok" and "differs from 'Dog' only in letter case" in results["Dog"]
    assert store.names() == ["dog"]
    assert not [p for p in store.root.iterdir() if p.name != "dog.safetensors"]  # no lock file, no temp


# --- case-insensitive look-ups (polish 12) ---
def test_show_and_export_find_a_name_in_another_letter_case(store, capsys, tmp_path):
    store.put(emb("Cat"))
    code, out, _ = run(capsys, "show", "cat")
    assert code == EXIT_OK and out.startswith("Cat:")
    code, out, _ = run(capsys, "export", "cat", "--format", "a1111-pt", "--out", tmp_path / "c.pt")
    assert code == EXIT_OK and (tmp_path / "c.pt").is_file()
    store.put(emb("dog"))
    code, _, err = run(capsys, "show", "do")
    assert code == EXIT_ERROR and "did you mean dog" in err
    assert store.resolve("CAT") == "Cat" and store.resolve("nothing") == "nothing"


# --- made names keep accented letters (polish 13) ---
@pytest.mark.parametrize(
    ("text", "name"),
    [("café", "cafe"), ("Crème brûlée", "Creme-brulee"), ("naïve ﬁsh", "naive-fish"), ("日本", None)],
)
def test_safe_name_takes_accents_off_letters_instead_of_dropping_them(text, name):
    made = safe_name(text)
    assert made == name if name else made.startswith("emb-")


# --- leftovers of killed writers (polish 14) ---
def test_a_write_removes_temp_files_of_killed_writers_only(store):
    store.put(emb("cat"))
    dead_pid = 2**22 + 4321  # above Linux's largest pid: no such process
    stale = store.root / f".dog.safetensors.{dead_pid}.0badf00d.tmp"
    fresh = store.root / f".dog.safetensors.{dead_pid}.12345678.tmp"  # its writer may be on another machine
    alive = store.root / f".dog.safetensors.{os.getpid()}.abcdef01.tmp"
    for path in (stale, fresh, alive):
        path.write_bytes(b"partial")
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(alive, (old, old))
    store.put(emb("bird"))
    assert not stale.exists() and fresh.exists() and alive.exists()
    assert store.names() == ["bird", "cat"]
    shutil.rmtree(store.root)
