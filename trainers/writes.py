"""Writing run files on a disk that can fill up: a full disk becomes one error that names the file.

torch's zip writer fails without saying why ("unexpected pos 64 vs 0"): `writing` asks the disk, removes the
half-written file, and raises DiskFull naming what was being written; trainers/runfolder.py words the advice.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from embeddings.errors import TokensmithError
from embeddings.files import run_temp_path

# torch's zip writer fails without saying why ("unexpected pos 64 vs 0", "basic_ios::clear: iostream error"):
# with less than this free on the disk, the reason is taken to be a full disk (the failed write has just used
# up what was left)
LOW_SPACE = 1 << 20
ZIP_WRITER_WORDS = ("unexpected pos", "iostream error", "PytorchStreamWriter")  # what torch's writer says


class DiskFull(TokensmithError):
    """A write of the run failed because its disk is full; `what` names the file as a user knows it."""

    def __init__(self, what: str, path: Path) -> None:
        super().__init__(f"the disk is full while writing {what} ({path})")
        self.what, self.path = what, Path(path)


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says that a disk is full: ENOSPC (or a quota), which safetensors words in its message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(words in str(exc) for words in ("No space left on device", "Disk quota exceeded"))


def _free_bytes(path: Path) -> float:
    there = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        return shutil.disk_usage(there).free if there else math.inf
    except OSError:
        return math.inf


@contextlib.contextmanager
def writing(what: str, path: Path, *, temp: Path | None = None) -> Iterator[None]:
    """Turn a full disk while writing `path` into DiskFull naming `what`; `temp` (a half-written file or
    folder of this write) is removed on any failure, so a full disk is not left fuller."""
    try:
        yield
    except BaseException as exc:
        # torch's writer says nothing of the cause: asked before the temp file gives its space back
        full = disk_full(exc) or (
            isinstance(exc, RuntimeError)
            and any(words in str(exc) for words in ZIP_WRITER_WORDS)
            and _free_bytes(Path(path)) < LOW_SPACE
        )
        if temp is not None:
            if temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)
        if full:
            raise DiskFull(what, path) from exc
        raise


def atomic_text(path: Path, text: str) -> None:
    """Write a run file whole or not at all (temp file, fsync, rename); a full disk is DiskFull naming it."""
    tmp = run_temp_path(path)
    with writing(f"the run's {path.name}", path, temp=tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
