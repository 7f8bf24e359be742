"""Waiting for the store's lock: a writer that waits long says once who holds it (and how to wake a stopped
holder), Ctrl-C ends the wait, a killed holder frees it at once, a thread cannot wait for its own lock, and
the studio says it on the page."""

import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from embeddings import Store, files
from tests.storerace import Meanwhile, emb


@pytest.fixture
def store(tokensmith_home):
    return Store.for_home(tokensmith_home)


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
