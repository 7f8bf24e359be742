"""Writing files completely or not at all: a temp file in the same folder, fsync, then an atomic rename; and
waiting for a folder's lock (the store's), saying who holds it when the wait is long."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock (the store writes unlocked there)
    fcntl = None

# A store folder's files: <name>.safetensors and its thumbnail <name>.preview.png
SUFFIX, PREVIEW_SUFFIX = ".safetensors", ".preview.png"
TEMP_PATTERN = re.compile(r"\.(?P<file>.+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp")  # what temp_path_for names
STALE_TEMP_SECONDS = 3600  # a write takes milliseconds: an hour-old temp file of a gone process is litter
# A run folder's write in progress ('.config.toml.tmp-123', run_temp_path): one writer per run, whose pid it
# names, so the run's cleanup knows a dead writer's litter
RUN_TEMP_PATTERN = re.compile(r"\.(?P<file>.+)\.tmp-(?P<pid>\d+)")
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
# A wait for a folder's lock this short (an import's run of puts) passes without a word; a longer one (a
# suspended import holds it) is said once. While quiet, the lock is asked for every LOCK_POLL_S.
LOCK_QUIET_S, LOCK_POLL_S = 1.0, 0.05


def read_user_text(path: Path, what: str, error: type[Exception]) -> str:
    """The text of a file the user wrote (`what`: 'config file', 'caption', ...): UTF-8, with or without the
    byte-order mark Windows editors write; anything else is `error` saying how to save it."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8"
        ) from None


def run_temp_path(path: Path) -> Path:
    """The temp name a run folder's write uses beside `path`: '.config.toml.tmp-<this pid>'."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def temp_path_for(path: Path) -> Path:
    """A hidden, unique temp name beside `path` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def remove_temp(tmp: Path) -> None:
    """Remove a temp file after a failure, never raising: the failure, not the clean-up, is the news."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the hidden temp files that killed writes left in `folder` (an hour old, their process gone on
    this machine); returns what was removed. Never raises: a write must not fail over litter."""
    removed: list[Path] = []
    try:
        scanned = list(os.scandir(folder))
    except OSError:
        return removed
    cutoff = time.time() - STALE_TEMP_SECONDS
    for entry in scanned:
        match = TEMP_PATTERN.fullmatch(entry.name)
        try:
            if not match or not entry.is_file() or entry.stat().st_mtime > cutoff:
                continue
            if _process_alive(int(match["pid"])):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def write_temp(path: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` for a temp file beside `path`, fsync it, return the temp path (caller renames it).

    On any failure (an interrupt too) the temp file is removed and the error raised.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        remove_temp(tmp)
        raise
    return tmp


# --- waiting for a folder's lock ---


def say_on_stderr(line: str) -> None:
    """Tell the user `line` on stderr, where it does not mix with what a command prints for scripts."""
    print(line, file=sys.stderr, flush=True)


def wait_for_lock(fd: int, folder: Path, on_wait: Callable[[str], None] | None) -> None:
    """Take an exclusive flock on `fd` (open on `folder`), waiting as long as another process holds it.

    After LOCK_QUIET_S, `on_wait` is told once who holds it (and how to wake a stopped holder); Ctrl-C while
    waiting is said too, then raised. A filesystem that cannot lock (ENOLCK, EOPNOTSUPP) leaves `fd`
    unlocked: the writes go ahead, as they did before there was a lock.
    """
    deadline = time.monotonic() + LOCK_QUIET_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(LOCK_POLL_S)  # a poll, not a blocking wait: `on_wait` is called in this thread
    if on_wait is not None:
        on_wait(_waiting_line(lock_holder(fd), folder))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except KeyboardInterrupt:
        if on_wait is not None:
            on_wait(f"stopped waiting for {folder}: this command wrote nothing more there")
        raise
    except OSError:
        return


def _waiting_line(pid: int | None, folder: Path) -> str:
    """What `wait_for_lock` says while it waits for process `pid` (None: not known) to let go of `folder`."""
    then = "this command goes on when it is done (Ctrl-C stops waiting)"
    if pid is None:
        return f"waiting for another process that is writing to {folder}; {then}"
    who = f"process {pid}{f' ({name})' if (name := _process_name(pid)) else ''}"
    if _process_stopped(pid):
        return (
            f"waiting for {who}, which holds {folder} but is stopped (Ctrl-Z?): resume it (`fg` in its "
            f"terminal, or `kill -CONT {pid}`) or end it; {then}"
        )
    return f"waiting for {who}, which is writing to {folder}; {then}"


def lock_holder(fd: int) -> int | None:
    """The pid of the process that holds an flock on the file open as `fd`, from /proc/locks (Linux); None
    where that cannot be told."""
    try:
        info = os.fstat(fd)
        lines = Path("/proc/locks").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return None
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    exact = by_inode = None  # an overlay filesystem may name another device than fstat does
    for line in lines:
        # '1: FLOCK  ADVISORY  WRITE 32119 fe:00:2556677 0 EOF'; a waiter's line reads '1: -> FLOCK ...'
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or not fields[5].endswith(f":{info.st_ino}"):
            continue
        pid = int(fields[4]) if fields[4].isdigit() else None  # 0: a holder outside this pid namespace
        if fields[5] == device:
            exact = exact or pid
        else:
            by_inode = by_inode or pid
    return exact or by_inode


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _process_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (Ctrl-Z, SIGSTOP): the state letter of /proc/PID/stat."""
    try:
        # bytes: the name in brackets before ')' is the executable's, cut to 15 bytes, maybe mid-character
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError, ValueError):
        return False


def file_version(path: Path) -> tuple[int, int, int] | None:
    """What changes whenever the file at `path` is replaced or rewritten: (inode, mtime, size); an overwrite
    renames a new file over the old one, so the inode tells even a same-size write in the same clock tick.
    None when it cannot be read (gone). Take it before reading the file: one replaced in between is then read
    again next time, never kept under the new file's version."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """`safetensors.torch.save(tensors, metadata)` with its header's keys in sorted order.

    safetensors writes the metadata in an order that changes from one process to the next, so the same
    embedding would get other bytes (another sha256, another hub commit, another A1111 hash) on every write.
    Only the header's JSON is rewritten: tensor offsets count from the end of the header, and the header is
    padded with spaces to 8 bytes, as safetensors pads it.
    """
    import safetensors.torch

    data = safetensors.torch.save(tensors, metadata=metadata)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    ordered = {key: header[key] for key in sorted(header)}  # '__metadata__' sorts before tensor names
    if "__metadata__" in ordered:
        ordered["__metadata__"] = dict(sorted(ordered["__metadata__"].items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def refuse_file_as_folder(folder: Path, flag: str = "--out") -> None:
    """NotADirectoryError when `folder`, or a folder above it, is an existing file (or a link to one): the
    output could never be written there (making the folder would fail with 'File exists', which reads as if
    the output existed), and nothing should sample or train first to find out."""
    for above in (folder, *folder.parents):
        if above.is_dir():
            return
        if os.path.lexists(above):
            raise NotADirectoryError(f"{above} is a file, not a folder: choose another {flag}")


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: some filesystems refuse to open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None], *, overwrite: bool = True) -> Path:
    """Write `path` via `write(tmp)`: readers see the old file or the whole new one, never a part.

    With `overwrite=False` the final step is a hard link, which fails with FileExistsError when another writer
    got there first, so two processes can never both "create" the same name.
    """
    path = Path(path)
    return commit_temp(write_temp(path, write), path, overwrite=overwrite)


def commit_temp(tmp: Path, path: Path, *, overwrite: bool = True) -> Path:
    """Give the temp file `tmp` (from `write_temp`) the name `path`, as `atomic_write` does; on failure the
    temp file is removed. Writing first and committing later lets a caller write two files before either
    takes its name (the store: an embedding and its thumbnail)."""
    path = Path(path)
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic create-if-absent
            tmp.unlink()
    except FileExistsError:  # os.link names the hidden temp file first: name only the file that exists
        remove_temp(tmp)
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
    except BaseException:
        remove_temp(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes, *, overwrite: bool = True) -> Path:
    """`atomic_write` for bytes already in memory."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


# --- a write that failed ---


def final_path(path: str | Path) -> Path:
    """The file a hidden temp file stands in for ('.x.png.123.ab12cd34.tmp' -> 'x.png', the run folder's
    '.pid.tmp-123' -> 'pid'); any other path as it is."""
    path = Path(path)
    for pattern in (TEMP_PATTERN, RUN_TEMP_PATTERN):
        if match := pattern.fullmatch(path.name):
            return path.with_name(match["file"])
    return path


def write_failure(
    exc: BaseException, target: str | Path | None = None, *, then: str = "try again"
) -> str | None:
    """One line for an OSError straight from the system that says a disk is full, read-only or not
    permitted, naming `target` (else the file the error names, a temp file by the file it stands in for),
    with what to do; None for any other error, and for one already worded (it has no strerror).

    "the disk is full while writing out/x.png: free some space, then try again"
    "out/x.png is on a read-only disk: choose another place for it (or remount the disk writable)"
    """
    if not isinstance(exc, OSError) or exc.strerror is None:
        return None
    if target is None:  # a rename names its source first: the destination is the file a user asked for
        named = exc.filename2 or exc.filename
        target = final_path(os.fsdecode(named)) if named is not None else None
    if exc.errno in FULL_DISK:
        full = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is used up"
        while_writing = f" while writing {target}" if target is not None else ""
        return f"{full}{while_writing}: free some space, then {then}"
    if exc.errno == errno.EROFS:
        what = f"{target} is" if target is not None else "the file is"
        return f"{what} on a read-only disk: choose another place for it (or remount the disk writable)"
    if exc.errno in (errno.EACCES, errno.EPERM):  # a read or a write: the words fit both
        what = f"{target}: " if target is not None else ""
        advice = "check the permissions of it and its folder, or choose another place"
        return f"{what}{exc.strerror.lower()}; {advice}"
    return None


def write_failure_error(
    exc: OSError, target: str | Path | None = None, *, then: str = "try again", written=(), total: int = 0
) -> Exception:
    """`write_failure` as the error to raise: a TokensmithError of its one line, saying which of a batch's
    `total` files were `written` before this one failed (they are kept); any other error is `exc` itself."""
    from embeddings.errors import TokensmithError

    line = write_failure(exc, target, then=then)
    if line is None:
        return exc
    if written:
        line += f" ({len(written)} of {total} images were written: {', '.join(map(str, written))})"
    return TokensmithError(line)
