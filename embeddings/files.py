"""Writing files completely or not at all: a temp file in the same folder, fsync, then an atomic rename."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path


def temp_path_for(path: Path) -> Path:
    """A hidden, unique temp name beside `path` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def remove_temp(tmp: Path) -> None:
    """Remove a temp file after a failure, never raising: the failure, not the clean-up, is the news."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


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
