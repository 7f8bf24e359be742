"""Whether a run folder's trainer lives (trainers/runlock.py): the trainer's lock on its `pid` file, held
for its whole life, not whichever process has the pid that the file names."""

import contextlib
import os
import signal
import subprocess
import sys

from trainers.runfolder import RunFolder

# Another process's view of a run folder: `holder` asks who holds it; `claim` claims it once a line comes on
# stdin, and then lives on as a trainer does
OTHER = """
import sys, time
from pathlib import Path
from trainers.runfolder import RunFolder

what, folder = sys.argv[1], RunFolder(Path(sys.argv[2]))
if what == "holder":
    print(folder.holder())
else:
    sys.stdin.readline()
    print(folder.claim(), flush=True)
    time.sleep(60)
"""


def other_process(what: str, folder) -> subprocess.Popen:
    args = [sys.executable, "-c", OTHER, what, str(folder)]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()


@contextlib.contextmanager
def trainer_holding(folder):
    """A live process that holds `folder` as a trainer does; it is killed at the end."""
    proc = other_process("claim", folder)
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "None\n"  # claimed
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def unrelated_process():
    """A live process that has nothing to do with any run (it stands for a pid reused after a reboot)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_pid_file_left_by_a_killed_trainer_holds_nothing_whoever_has_that_pid_now(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    pid_file = folder.root / "pid"
    with unrelated_process() as other:
        pid_file.write_text(f"{other.pid}\n")  # a SIGKILLed trainer's pid, now another process's
        try:
            assert folder.claim() is None  # the folder is free: a resume may take it
            assert int(pid_file.read_text()) == os.getpid()
        finally:
            folder.release()
        pid_file.write_text(f"{other.pid}\n")
        assert folder.holder() is None and not folder.alive()
        assert other.poll() is None


def test_a_trainer_holds_its_folder_until_it_ends_even_by_sigkill(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with trainer_holding(folder.root) as trainer:
        assert folder.holder() == trainer.pid and folder.alive()
        assert folder.claim() == trainer.pid  # refused: another run lives there
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    assert folder.pid_path.exists()  # a kill leaves the file behind, but not the lock
    assert folder.holder() is None and not folder.alive()
    try:
        assert folder.claim() is None
    finally:
        folder.release()


def test_the_claiming_process_does_not_take_its_own_lock_for_another_run(tmp_path):
    """flock belongs to an open file: the trainer's own test of its pid file must not read as "in use"."""
    folder = RunFolder(tmp_path / "run")
    (tmp_path / "link").symlink_to(folder.root, target_is_directory=True)
    assert folder.claim() is None
    try:
        assert folder.claim() is None and RunFolder(tmp_path / "link").claim() is None
        assert folder.holder() == os.getpid() and folder.alive()
        asked = other_process("holder", folder.root)
        seen = asked.communicate()[0]
        assert seen.strip() == str(os.getpid())  # and other processes see this one
    finally:
        folder.release()
    assert not folder.pid_path.exists() and folder.holder() is None
    with trainer_holding(folder.root) as trainer:  # released: another process may claim it at once
        assert folder.holder() == trainer.pid


def test_runs_started_at_once_in_one_folder_get_it_once(tmp_path):
    folder = tmp_path / "run"
    procs = [other_process("claim", folder) for _ in range(4)]
    try:
        for proc in procs:  # all ready: start them as close together as can be
            proc.stdin.write("go\n")
            proc.stdin.flush()
        said = [proc.stdout.readline().strip() for proc in procs]
        winners = [proc.pid for proc, word in zip(procs, said, strict=True) if word == "None"]
        assert len(winners) == 1
        assert sorted(said) == sorted(["None", *[str(winners[0])] * 3])  # the others name the holder
        assert RunFolder(folder).holder() == winners[0]
    finally:
        for proc in procs:
            stop(proc)


def test_a_filesystem_that_refuses_locks_falls_back_to_the_pid_file_with_a_warning(
    tmp_path, monkeypatch, capsys
):
    import errno

    from trainers import runlock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))  # NFS without a lock manager says this

    monkeypatch.setattr(runlock.fcntl, "flock", no_locks)
    monkeypatch.setattr(runlock, "_warned", [])
    dead = RunFolder(tmp_path / "dead")
    dead.root.mkdir()
    (dead.root / "pid").write_text("999999999\n")  # a killed run's pid file: nobody has that pid
    assert dead.holder() is None and not dead.alive()
    folder = RunFolder(tmp_path / "run")
    assert folder.claim() is None  # claimed by the pid file, as where there is no flock
    assert folder.alive() and folder.holder() == os.getpid()
    assert int((folder.root / "pid").read_text()) == os.getpid()
    assert capsys.readouterr().err.count("does not lock files (No locks available)") == 1  # said once
    folder.release()
    assert not (folder.root / "pid").exists() and not folder.alive()
    (folder.root / "pid").write_text(f"{os.getppid()}\n")  # a live process's pid: the folder is taken
    assert folder.claim() == os.getppid()
