"""Two writers of one store at once: each race is replayed step by step, the other writer (another process:
an import, a training run's store write, a second `rm`) made to act at the one point where it used to slip
in, in a thread with its own Store (a flock taken through another descriptor excludes it as it would another
process)."""

import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from embeddings import Embedding, Store, StoreError, canonical, files, trash
from embeddings import store as store_module
from embeddings.errors import EmbeddingFormatError
from embeddings.files import PREVIEW_SUFFIX

RED, GREEN = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 255, 0))


def emb(name: str, value: float) -> Embedding:
    return Embedding(name, {"emb_params": torch.full((2, 64), value)})


def value(e: Embedding) -> float:
    return float(e.vectors["emb_params"][0, 0])


def colour(path: Path) -> tuple[int, ...]:
    with Image.open(path) as image:
        return image.getpixel((0, 0))[:3]


@pytest.fixture
def store(tokensmith_home):
    return Store.for_home(tokensmith_home)


@pytest.fixture
def other(tokensmith_home):
    """The other writer's store: the same folder, its own lock descriptor."""
    return Store.for_home(tokensmith_home)


class Meanwhile:
    """Run `action` in a thread, as another process would, and return once it has finished or is waiting
    for a flock that this thread holds (its own store write, or the runs/ start lock)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[threading.Thread] = []
        self.results: list[object] = []
        self._settled = threading.Event()
        real_flock = fcntl.flock

        def flock(fd: int, op: int) -> None:
            if threading.current_thread() not in self.threads:
                return real_flock(fd, op)
            try:
                return real_flock(fd, op | fcntl.LOCK_NB)
            except BlockingIOError:
                self._settled.set()  # the other writer waits for the lock: this side goes on
                if op & fcntl.LOCK_NB:
                    raise
            return real_flock(fd, op)

        monkeypatch.setattr(fcntl, "flock", flock)

    def run(self, action) -> None:
        def body() -> None:
            try:
                self.results.append(action())
            except Exception as exc:  # the other writer's refusal is part of what the test checks
                self.results.append(exc)
            finally:
                self._settled.set()

        thread = threading.Thread(target=body, daemon=True)
        self.threads.append(thread)
        self._settled.clear()
        thread.start()
        assert self._settled.wait(20), "the other writer neither finished nor waited for the lock"

    def join(self) -> list[object]:
        for thread in self.threads:
            thread.join(20)
            assert not thread.is_alive()
        return self.results


def after_first_call(monkeypatch, owner, name: str, then) -> None:
    """Patch `owner.name` so that `then()` runs once, right after its first call (in this thread) returns."""
    real, done = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if not done and threading.current_thread() is threading.main_thread():
            done.append(True)
            then()
        return result

    monkeypatch.setattr(owner, name, wrapper)


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


# --- waiting for the store's lock (review finding 4) ---


def hold_lock(root: Path) -> int:
    """Take the store folder's lock as another writer would; close the descriptor to let go."""
    fd = os.open(root, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_writer_that_waits_for_the_lock_says_once_who_holds_it(store, tokensmith_home, monkeypatch):
    store.put(emb("bird", 1.0))
    monkeypatch.setattr(files, "LOCK_QUIET_S", 0.0)
    said, told = [], threading.Event()
    waiting = Store.for_home(tokensmith_home, on_wait=lambda line: (said.append(line), told.set()))
    fd = hold_lock(store.root)
    writer = threading.Thread(target=lambda: waiting.put(emb("cat", 2.0)), daemon=True)
    writer.start()
    assert told.wait(20)
    os.close(fd)
    writer.join(20)
    assert store.names() == ["bird", "cat"]
    assert len(said) == 1
    if Path("/proc/locks").exists():
        assert said[0].startswith(f"waiting for process {os.getpid()} (")
    assert f"writing to {store.root}; this command goes on when it is done (Ctrl-C stops waiting)" in said[0]


def test_a_short_wait_for_the_lock_says_nothing(store, tokensmith_home, monkeypatch):
    """An import's run of puts holds the lock for a moment: a writer waiting that long stays quiet."""
    store.put(emb("bird", 1.0))
    monkeypatch.setattr(files, "LOCK_QUIET_S", 60.0)
    said = []
    quiet = Store.for_home(tokensmith_home, on_wait=said.append)
    fd = hold_lock(store.root)
    meanwhile = Meanwhile(monkeypatch)
    meanwhile.run(lambda: quiet.put(emb("cat", 2.0)))  # returns once it waits
    os.close(fd)
    meanwhile.join()
    assert store.names() == ["bird", "cat"] and said == []


def test_a_stopped_holder_is_named_with_how_to_wake_it(store, tokensmith_home, monkeypatch):
    """An import suspended with Ctrl-Z keeps the lock: the waiting line says so and how to resume it."""
    if not Path("/proc/locks").exists():
        pytest.skip("the holder of a lock is read from /proc/locks (Linux)")
    store.put(emb("bird", 1.0))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, signal, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); "
            "os.kill(os.getpid(), signal.SIGSTOP)",
            str(store.root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.waitpid(holder.pid, os.WUNTRACED)  # returns once the holder has stopped itself
        monkeypatch.setattr(files, "LOCK_QUIET_S", 0.0)
        said, told = [], threading.Event()
        waiting = Store.for_home(tokensmith_home, on_wait=lambda line: (said.append(line), told.set()))
        writer = threading.Thread(target=lambda: waiting.rename("bird", "crow"), daemon=True)
        writer.start()
        assert told.wait(20)
    finally:
        holder.kill()  # a stopped process dies of SIGKILL; the kernel drops its lock
        holder.wait()
    writer.join(20)
    assert store.names() == ["crow"]
    assert said[0].startswith(f"waiting for process {holder.pid} (")
    assert (
        f"which holds {store.root} but is stopped (Ctrl-Z?): resume it (`fg` in its terminal, or "
        f"`kill -CONT {holder.pid}`) or end it; this command goes on when it is done"
    ) in said[0]


def test_ctrl_c_while_waiting_for_the_lock_ends_the_command_with_a_clear_line(
    store, tokensmith_home, monkeypatch, capsys
):
    """The CLI's writer (stderr by default): the waiting line, then, on Ctrl-C, that it stopped waiting."""
    from studio.cli import main

    store.put(emb("cat", 1.0))
    monkeypatch.setattr(files, "LOCK_QUIET_S", 0.0)
    real_flock = fcntl.flock

    def flock(fd: int, op: int) -> None:
        if not op & fcntl.LOCK_NB:  # the blocking wait, after the waiting line: the user presses Ctrl-C
            raise KeyboardInterrupt
        return real_flock(fd, op)

    fd = hold_lock(store.root)
    monkeypatch.setattr(fcntl, "flock", flock)
    try:
        code = main(["rename", "cat", "kitty"])
    finally:
        os.close(fd)
    err = capsys.readouterr().err.splitlines()
    assert code != 0 and store.names() == ["cat"]
    assert [line for line in err if line.startswith("waiting for ")] == err[-3:-2]
    assert f"writing to {store.root}" in err[-3]
    assert err[-2:] == [
        f"stopped waiting for {store.root}: this command wrote nothing more there",
        "tokensmith rename: interrupted",
    ]


def test_a_store_made_with_no_waiting_reporter_says_nothing_while_it_waits(
    tokensmith_home, monkeypatch, capsys
):
    """What the studio asks for (`on_wait=None`): its terminal is not the user's."""
    monkeypatch.setattr(files, "LOCK_QUIET_S", 0.0)
    quiet = Store.for_home(tokensmith_home, on_wait=None)
    quiet.put(emb("bird", 1.0))
    fd = hold_lock(quiet.root)
    meanwhile = Meanwhile(monkeypatch)
    meanwhile.run(lambda: quiet.put(emb("cat", 2.0)))
    os.close(fd)
    meanwhile.join()
    assert quiet.names() == ["bird", "cat"] and capsys.readouterr().err == ""


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


def test_killing_the_holder_of_the_lock_frees_it_at_once(store, tokensmith_home):
    """The kernel drops a flock when its process dies (SIGKILL included): no stale lock to wait for."""
    store.put(emb("bird", 1.0))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
            str(store.root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    said = []
    Store.for_home(tokensmith_home, on_wait=said.append).put(emb("cat", 2.0))
    assert store.names() == ["bird", "cat"] and said == []


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


def test_a_locked_write_inside_an_open_batch_of_the_same_thread_is_an_error_not_a_hang(store):
    store.put(emb("bird", 1.0))
    with store.batch() as batch:
        batch.put(emb("cat", 2.0))  # the batch now holds the store's lock
        with pytest.raises(RuntimeError, match=r"already holds the lock .* write through it"):
            store.delete("bird")
    store.delete("bird")  # the batch has let go: the same call works
    assert store.names() == ["cat"]


def test_a_holder_whose_name_is_not_utf8_is_still_told_apart(tmp_path):
    if not Path("/proc/self/comm").exists():
        pytest.skip("process names and states are read from /proc (Linux)")
    named = (
        "import sys; open('/proc/self/comm', 'wb').write(b'imp\\xe3\\x83'); print(1, flush=True); "
        "sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", named], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"1"  # its name is now cut mid-character
        assert files._process_stopped(holder.pid) is False
        os.kill(holder.pid, signal.SIGSTOP)
        os.waitpid(holder.pid, os.WUNTRACED)
        assert files._process_stopped(holder.pid) is True
    finally:
        holder.kill()
        holder.wait()


def test_the_studio_says_on_the_page_who_holds_the_lock_it_waits_for(tokensmith_home, monkeypatch):
    from studio.app import context

    monkeypatch.setattr(context, "home", lambda: tokensmith_home)
    shown = []
    monkeypatch.setattr(context.st, "warning", lambda text, **kwargs: shown.append(text))
    line = f"waiting for process 7 (python), which is writing to {tokensmith_home}; " + (
        "this command goes on when it is done (Ctrl-C stops waiting)"
    )
    context.store().on_wait(line)  # what wait_for_lock calls, in the page's own thread
    said = f"waiting for process 7 (python), which is writing to {tokensmith_home}"
    assert shown == [f"{said}; this page goes on when it is done"]
