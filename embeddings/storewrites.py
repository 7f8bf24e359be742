"""How the store writes: an embedding and its thumbnail as a pair (neither takes its name until both are
written; a failed write leaves the old pair whole), and the words for a write that fails."""

from __future__ import annotations

import contextlib
import errno
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from embeddings.files import atomic_write_bytes, commit_temp, remove_temp, temp_path_for

if TYPE_CHECKING:
    from PIL.Image import Image


class StoreWriteError(OSError):
    """A store write that failed, in words that name the file and say what to do (`errno`: the system's).
    `target` (the file) and `reason` (the system's words) let a caller that gives its own advice (the
    trainer's resume line) name the file without repeating the store's."""

    def __init__(self, message: str, *, code: int | None, target: Path, reason: str) -> None:
        super().__init__(message)  # one argument: str() is the message, not '[Errno 28] ...'
        self.errno, self.target, self.reason = code, Path(target), reason


def write_error(target: Path, root: Path, exc: OSError, doing: str) -> StoreWriteError:
    """An OSError that names `target` (not the hidden temp file beside it) and says what to do."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "the disk is full: free some space, then try again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = (
            f"the store folder {root} is not writable: check its permissions (and that its disk is not "
            "mounted read-only), or use another store (--home DIR or TOKENSMITH_HOME)"
        )
    else:
        advice = "fix the cause, then try again"
    return StoreWriteError(
        f"cannot {doing} {target}: {reason}; {advice}", code=exc.errno, target=target, reason=reason
    )


def put_pair(
    path: Path, data: bytes, preview_path: Path, new_preview: Path | None, *, overwrite: bool
) -> None:
    """Write the embedding file with the thumbnail there moved aside (put back if the write fails), then give
    the new thumbnail (written already, as the temp file `new_preview`) its name."""
    aside = temp_path_for(preview_path)  # a temp name: a kill's leftover is removed as stale
    try:
        os.replace(preview_path, aside)
    except FileNotFoundError:
        aside = None
    try:
        atomic_write_bytes(path, data, overwrite=overwrite)
    except BaseException:
        if aside is not None:
            with contextlib.suppress(OSError):  # a rename needs no space: the old pair is whole again
                os.replace(aside, preview_path)
        raise
    try:
        if new_preview is not None:
            commit_temp(new_preview, preview_path)
    finally:
        if aside is not None:
            remove_temp(aside)


def png_bytes(image: Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
