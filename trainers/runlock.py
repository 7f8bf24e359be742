"""Who trains in a run folder: its trainer holds an exclusive flock on the folder's `pid` file while it lives.

The kernel drops the lock however the process ends (SIGKILL, the OOM killer, a reboot), so a `pid` file left
behind holds nothing, whatever process has its pid later; readers test the lock, never the pid alone. Only the
main process of a multi-process launch claims (the others share its folder). A child forked without exec (a
data-loader worker) shares the lock until it exits too. Where there is no flock (Windows), or the run folder's
filesystem refuses locks (NFS without a lock manager, some FUSE and SMB mounts), a live process with the
file's pid holds the folder, which a reused pid can fool; a warning says so once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from embeddings.files import run_temp_path
from trainers.writes import atomic_text, writing

try:
    import fcntl
except ImportError:  # Windows: no flock; a live process with the pid file's pid holds the folder instead
    fcntl = None

# The run folders this process has claimed: (st_dev, st_ino) of the folder -> its locked pid file descriptor.
# A flock belongs to an open file, not to a process, so this process's own test of its pid file would find it
# locked "by another run": it asks here first.
_CLAIMS: dict[tuple[int, int], int] = {}
_PID_CLAIMS: set[tuple[int, int]] = set()  # claimed by the pid file alone, where locks are refused
# what flock says on a filesystem that does not lock (as opposed to a lock held by another process)
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
_warned: list[bool] = []


class _LocksRefused(Exception):
    """The filesystem refused flock: liveness falls back to the pid file."""


def _locks_refused(exc: OSError) -> bool:
    """Whether `exc` says the filesystem cannot lock (then the pid file alone decides), warning once."""
    if exc.errno not in NO_LOCKS:
        return False
    if not _warned:
        _warned.append(True)
        print(
            f"warning: the run folder's filesystem does not lock files ({os.strerror(exc.errno)}): whether a "
            "run is alive is judged by its pid file alone, which a reused process id can fool",
            file=sys.stderr,
        )
    return True


def read_pid(path: Path) -> int | None:
    """The process id in a `pid` file, or None when it is missing or unreadable."""
    try:
        return int(path.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int | None) -> bool:
    """True if a process with this id exists (a zombie child counts until it is reaped)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _pid_in(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 64, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _probe(path: Path) -> tuple[bool, int | None]:
    """Whether a live trainer holds the pid file `path` locked, and the pid it wrote there. A shared,
    non-blocking lock, dropped at once: it fails only against a trainer's exclusive one, and never against
    another reader's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a fifo in its place does not hang
    except FileNotFoundError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _pid_in(fd)  # claim writes the pid before the file takes its name: never empty
        except OSError as exc:
            if _locks_refused(exc):
                raise _LocksRefused from exc
            raise
        return False, None
    finally:
        os.close(fd)  # drops the shared lock with it


@contextlib.contextmanager
def _one_claimant(root: Path) -> Iterator[None]:
    """Claimants of one folder, one at a time (a lock on the folder itself, held for microseconds): the test
    of the old pid file and the new one taking its name must not interleave with another's."""
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if _locks_refused(exc):
                raise _LocksRefused from exc
            raise
        yield
    finally:
        os.close(fd)


def _locked_pid_file(path: Path) -> int:
    """Write this process's pid to a new file, lock it and give it `path`'s name; the open, locked descriptor.

    Locked before it is renamed, a pid file at `path` is never seen unlocked while its trainer lives, nor
    empty, so an exclusive lock there always comes with the pid of the process that holds it."""
    tmp = run_temp_path(path)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with writing("the run's pid file", path, temp=tmp):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else can know this file yet
            except OSError as exc:
                if _locks_refused(exc):
                    raise _LocksRefused from exc
                raise
            os.write(fd, f"{os.getpid()}\n".encode())
            os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _key(root: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(root)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def claimed_here(root: Path) -> bool:
    """Whether this process holds the run folder `root`."""
    key = _key(root)
    return key in _CLAIMS or key in _PID_CLAIMS


def claim(root: Path) -> int | None:
    """Take the run folder `root` for this process, until `release` or the process ends; the pid of a live
    trainer that holds it, else None (claimed; this process's own claim counts as claimed)."""
    if claimed_here(root):
        return None
    pid_path = root / "pid"
    if fcntl is not None:
        try:
            with _one_claimant(root):
                held, holder_pid = _probe(pid_path)
                if held:
                    return holder_pid or 0  # 0: a locker that wrote no pid (not a tokensmith trainer)
                _CLAIMS[_key(root)] = _locked_pid_file(pid_path)
            return None
        except _LocksRefused:
            pass  # the filesystem does not lock: the pid file alone, as without fcntl
    holder_pid = _claim_by_pid(pid_path)
    if holder_pid is None:
        _PID_CLAIMS.add(_key(root))
    return holder_pid


def _claim_by_pid(pid_path: Path) -> int | None:
    """`claim` without flock: an exclusive create of the pid file, or a pid file whose process is gone."""
    try:
        handle = os.open(pid_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder_pid = read_pid(pid_path)
        if holder_pid and holder_pid != os.getpid() and pid_alive(holder_pid):
            return holder_pid
        atomic_text(pid_path, f"{os.getpid()}\n")  # a finished or killed run's pid: free
        return None
    with os.fdopen(handle, "w") as out:
        out.write(f"{os.getpid()}\n")
    return None


def holder(root: Path) -> int | None:
    """The pid of the live trainer that holds `root` (this process, if it does), else None: a pid file without
    its lock is a dead run's, even when another process has that pid now. Raises OSError when the pid file is
    there but cannot be opened."""
    return _held(root)[1]


def alive(root: Path) -> bool:
    """Whether a live trainer holds `root` (see `holder`; a lock whose holder wrote no pid counts too)."""
    return _held(root)[0]


def _held(root: Path) -> tuple[bool, int | None]:
    if claimed_here(root):
        return True, os.getpid()
    if fcntl is not None:
        try:
            held, pid = _probe(root / "pid")
            return held, pid if held else None
        except _LocksRefused:
            pass  # the filesystem does not lock: the pid file alone
    pid = read_pid(root / "pid")
    return (True, pid) if pid_alive(pid) else (False, None)


def release(root: Path) -> None:
    """Give up the claim: remove the `pid` file when it is still this process's, and drop its lock."""
    pid_path = root / "pid"
    key = _key(root)
    fd = _CLAIMS.pop(key, None) if key else None
    if fd is None:
        if (key in _PID_CLAIMS or fcntl is None) and read_pid(pid_path) == os.getpid():
            pid_path.unlink(missing_ok=True)
        _PID_CLAIMS.discard(key)
        return
    try:
        if os.stat(pid_path).st_ino == os.fstat(fd).st_ino:  # removed before the lock is dropped
            pid_path.unlink()
    except OSError:
        pass  # gone already: nothing to remove
    finally:
        os.close(fd)
