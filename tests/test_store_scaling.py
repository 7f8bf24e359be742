"""Work that must not grow with the store: an import reads the store folder a fixed number of times whatever
it imports, a prompt naming stored embeddings exactly never lists the store (and a grid does not re-read
them per cell, yet sees a file overwritten between requests), and `tokensmith list` reads headers without
torch. Counted in calls, never timed."""

import ast
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from clirun import run

from embeddings import Embedding, Store, StoreError, save_canonical
from embeddings.listing import Listing
from studio.cli import EXIT_OK
from studio.generation.conditioning import PromptEncoder
from studio.generation.prompt import PromptError, parse
from trainers.models import LoadedModel, detect_family
from trainers.tiny import tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent


def emb(name, seed=0, n=1, width=32):
    vectors = torch.randn(n, width, generator=torch.Generator().manual_seed(seed))  # (n, width)
    return Embedding(name, {"emb_params": vectors})


def filled(home: Path, count: int) -> Store:
    store = Store.for_home(home)
    for i in range(count):
        store.put(emb(f"kept-{i}", seed=i))
    return store


def files(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        save_canonical(emb(name, seed=100 + i), folder / f"{name}.safetensors")
    return folder


@pytest.fixture
def counted(monkeypatch):
    """Counts of the store-wide reads: folder scans (by folder) and `Listing.names` calls."""
    counts = {"names": 0, "scans": {}}
    real_scandir, real_names = os.scandir, Listing.names

    def scandir(path="."):
        key = Path(path)
        counts["scans"][key] = counts["scans"].get(key, 0) + 1
        return real_scandir(path)

    def names(self):
        counts["names"] += 1
        return real_names(self)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(Listing, "names", names)
    return counts


# --- import: one scan for all the names, one lock and scan per run of puts ---
def test_an_import_scans_the_store_folder_as_often_for_20_files_as_for_5(tmp_path, capsys, counted):
    scans = []
    for count in (5, 20):
        home = tmp_path / f"home-{count}"
        store = filled(home, 3)
        folder = files(tmp_path / f"in-{count}", [f"new-{i}" for i in range(count)])
        counted["names"], counted["scans"] = 0, {}
        code, out, _ = run(capsys, "--home", home, "import", folder)
        scans.append(counted["scans"].get(store.root, 0))
        assert counted["names"] == 0  # the sorted, validated listing is for people, not for checks
        assert code == EXIT_OK and len(out.split()) == count and len(store.names()) == count + 3
    assert scans[0] == scans[1] <= 3  # the import's check, and one lock and scan for the batch


def test_studio_uploads_scan_the_store_folder_as_often_for_12_files_as_for_3(tmp_path, counted):
    from studio.app.libraryfiles import store_uploads

    scans = []
    for count in (3, 12):
        store = filled(tmp_path / f"home-{count}", 2)
        found = [(f"up-{i}.pt", emb(f"up-{i}", seed=50 + i)) for i in range(count)]
        counted["names"], counted["scans"] = 0, {}
        problems = []
        added, same = store_uploads(store, found, problems, overwrite=False)
        assert counted["names"] == 0 and problems == [] and same == [] and len(added) == count
        scans.append(counted["scans"].get(store.root, 0))
    assert scans[0] == scans[1] <= 3


def test_an_import_still_refuses_a_case_twin_of_a_stored_name(tmp_path, capsys):
    store = filled(tmp_path / "home", 1)
    store.put(emb("Cat", seed=9))
    folder = files(tmp_path / "in", ["dog", "cat"])
    code, _, err = run(capsys, "--home", tmp_path / "home", "import", folder, "--force")
    assert code != EXIT_OK and "'Cat' already exists and differs from 'cat' only in letter case" in err
    assert store.names() == ["Cat", "kept-0"]  # refused before any was stored


def test_a_batch_refuses_a_twin_stored_by_another_writer_after_the_import_checked(tokensmith_home):
    store = Store.for_home(tokensmith_home)
    store.put(emb("bird"))
    assert store.case_twin("cat", folded=store.folded_names()) is None  # what the import checked
    Store.for_home(tokensmith_home).put(emb("Cat", seed=1))  # another process, before the batch locks
    with store.batch() as batch:
        batch.put(emb("dog", seed=2))
        with pytest.raises(StoreError, match="'Cat' already exists and differs from 'cat' only in letter"):
            batch.put(emb("cat", seed=3))
    assert store.names() == ["bird", "Cat", "dog"]


def test_a_writer_waits_for_a_batch_and_then_sees_what_it_stored(tokensmith_home, monkeypatch):
    from embeddings import store as store_module

    store = Store.for_home(tokensmith_home)
    store.put(emb("bird"))
    real_flock, waiting = store_module.fcntl.flock, threading.Event()

    def flock(fd, op):
        if threading.current_thread() is not threading.main_thread():
            waiting.set()  # the other writer has checked early and now asks for the lock
        return real_flock(fd, op)

    monkeypatch.setattr(store_module.fcntl, "flock", flock)
    results = {}

    def other_writer():
        try:
            Store.for_home(tokensmith_home).put(emb("Dog", seed=1))
            results["Dog"] = "stored"
        except StoreError as exc:
            results["Dog"] = str(exc)

    with store.batch() as batch:
        batch.put(emb("ant", seed=2))  # the batch holds the lock from here to the end of its run
        thread = threading.Thread(target=other_writer)
        thread.start()
        assert waiting.wait(10)
        batch.put(emb("dog", seed=3))  # no twin in the batch's scan: the other writer is still waiting
    thread.join(10)
    assert "'dog' already exists and differs from 'Dog' only in letter case" in results["Dog"]
    assert store.names() == ["ant", "bird", "dog"]


def test_a_batch_lets_other_writers_in_between_runs(tokensmith_home, monkeypatch):
    from embeddings import storebatch

    monkeypatch.setattr(storebatch, "LOCK_RUN", 2)
    store, taken = Store.for_home(tokensmith_home), []
    real_locked = Store._locked

    def locked(self):
        taken.append(self)
        return real_locked(self)

    monkeypatch.setattr(Store, "_locked", locked)
    with store.batch() as batch:
        for i in range(5):
            batch.put(emb(f"e{i}", seed=i))
    assert len(taken) == 3 and store.names() == [f"e{i}" for i in range(5)]  # runs of 2, 2 and 1


# --- prompts: an exact name costs a stat; a grid reads each file once until it changes ---
@pytest.fixture(scope="module")
def model():
    pipe = tiny_pipeline("sd1")
    return LoadedModel(pipe=pipe, family=detect_family(pipe), source="tiny-sd1")


def test_a_prompt_naming_stored_embeddings_exactly_never_lists_the_store(model, tokensmith_home, counted):
    store = filled(tokensmith_home, 3)
    store.put(emb("cat", seed=7, n=2))
    encoder, nodes = PromptEncoder(model), parse("a <cat> and <kept-1> on <kept-2>")
    counted["names"], counted["scans"] = 0, {}
    used = encoder.require(nodes, store)
    assert [e.name for e in used] == ["cat", "kept-1", "kept-2"] and counted["names"] == 0
    assert counted["scans"].get(store.root, 0) == 0


def test_a_second_request_reads_no_stored_file_again(model, tokensmith_home, monkeypatch):
    store = filled(tokensmith_home, 2)
    encoder, nodes = PromptEncoder(model), parse("a <kept-0> <kept-1>")
    encoder.require(nodes, store)
    reads = []
    real_get = Store.get
    monkeypatch.setattr(Store, "get", lambda self, name: reads.append(name) or real_get(self, name))
    for _ in range(3):  # a grid's cells
        encoder.require(nodes, store)
    assert reads == []


def test_an_embedding_overwritten_between_requests_is_read_again(model, tokensmith_home):
    store = Store.for_home(tokensmith_home)
    old, new = emb("cat", seed=1, n=2), emb("cat", seed=2, n=2)  # the same shape: the same file size
    store.put(old)
    encoder, nodes = PromptEncoder(model), parse("a <cat>")
    [first] = encoder.require(nodes, store)
    before = encoder.encode(nodes).embeds  # (1, L, D)
    store.put(new, overwrite=True)
    [second] = encoder.require(nodes, store)
    assert torch.equal(first.vectors["emb_params"], old.vectors["emb_params"])
    assert torch.equal(second.vectors["emb_params"], new.vectors["emb_params"])
    assert encoder.installed["cat"].sha256 == new.sha256
    assert not torch.equal(encoder.encode(nodes).embeds, before)


def test_a_name_in_another_case_or_mistyped_still_lists_once(model, tokensmith_home, counted):
    store = filled(tokensmith_home, 1)
    store.put(emb("MyCat", seed=4))
    encoder = PromptEncoder(model)
    counted["names"] = 0
    [found] = encoder.require(parse("a <mycat>"), store)
    assert found.name == "MyCat" and counted["names"] == 1
    with pytest.raises(PromptError, match=r"unknown embedding <MyCta>.*did you mean <MyCat>\?"):
        encoder.require(parse("a <MyCta>"), store)
    store.delete("MyCat")
    with pytest.raises(PromptError, match="unknown embedding <MyCat>"):
        encoder.require(parse("a <MyCat>"), store)  # deleted: the cached copy is not used


# --- `tokensmith list` without torch ---
HEADER_MODULES = ("embeddings/canonical.py", "embeddings/listing.py", "embeddings/store.py")


def module_level_imports(path: Path) -> set[str]:
    """Modules a file imports when it is imported (its top level, `if TYPE_CHECKING:` blocks aside)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", HEADER_MODULES)
def test_the_header_reader_and_the_listing_import_torch_only_where_tensors_load(module):
    heavy = {name for name in module_level_imports(ROOT / module) if name.split(".")[0] == "torch"}
    heavy |= {name for name in module_level_imports(ROOT / module) if name == "safetensors.torch"}
    assert heavy == set(), f"{module} imports {sorted(heavy)} at its top level"


def test_list_rm_and_restore_run_without_importing_torch(tokensmith_home):
    filled(tokensmith_home, 2)
    code = (
        "import sys; from studio.cli import main\n"
        f"home = {str(tokensmith_home)!r}\n"
        "commands = (['list'], ['rm', 'kept-0'], ['restore', 'kept-0'])\n"
        "codes = [main(['--home', home, *argv]) for argv in commands]\n"
        "print(codes, sorted({'torch', 'safetensors.torch'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[0, 0, 0] []"
