"""Writing files completely or not at all: a temp file in the same folder, fsync, then an atomic rename."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

# A store folder's files: <name>.safetensors and its thumbnail <name>.preview.png
SUFFIX, PREVIEW_SUFFIX = ".safetensors", ".preview.png"
TEMP_PATTERN = re.compile(r"\.(?P<file>.+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp")  # what temp_path_for names
STALE_TEMP_SECONDS = 3600  # a write takes milliseconds: an hour-old temp file of a gone process is litter


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


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    tmp = write_temp(path, write)
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
