"""The store's trash: `delete` moves an embedding (and its preview) into `.trash/<stamp>/`, `restore` brings
the newest deleted copy back. Mixed into Store (embeddings/store.py), whose name rules, folder lock and
atomic writes it uses, so a restore obeys the same letter-case rule as a put."""

from __future__ import annotations

import contextlib
import errno
import filecmp
import os
import shutil
import time
from pathlib import Path

from embeddings.errors import StoreError
from embeddings.files import PREVIEW_SUFFIX, SUFFIX, atomic_write

TRASH = ".trash"


class Trash:
    """delete / trashed / restore for Store (it provides root, path, stray_path, check_case_twin, _require,
    _check_folder, _writing and _locked)."""

    def delete(self, name: str) -> Path:
        """Move an embedding (and its preview) to the trash; returns its trash folder. `restore` undoes it.

        Renames only, after the folder is made: a full disk refuses the folder, before anything moves. The
        preview goes first, so a kill between the two leaves the embedding without its thumbnail, never a
        thumbnail without its embedding (which a later embedding of that name would show). Both moves run
        under the store's lock, so a put of the same name (a training run storing its result) comes before
        or after them, never between. The folder's name holds the time of the deletion; nothing else is
        recorded.
        """
        self._require(name, stray_ok=True)  # said at once, not after waiting for the lock
        with self._locked():
            return self._move_to_trash(self._require(name, stray_ok=True), name)  # also a refused name

    def _move_to_trash(self, path: Path, name: str) -> Path:
        """`delete`'s moves, under the lock: the preview, then the embedding, into a new trash folder."""
        folder = self.root / TRASH / f"{time.time_ns():020d}-{os.getpid()}"
        preview = path.with_name(name + PREVIEW_SUFFIX)
        with self._writing(path, "move to the trash"):
            folder.mkdir(parents=True, exist_ok=False)
            moved = preview.is_file()
            if moved:
                os.replace(preview, folder / preview.name)
            try:
                os.replace(path, folder / path.name)
            except BaseException:
                if moved:  # the embedding stays: so does its thumbnail
                    with contextlib.suppress(OSError):
                        os.replace(folder / preview.name, preview)
                with contextlib.suppress(OSError):
                    folder.rmdir()
                raise
        return folder

    def trashed(self) -> list[str]:
        """Names in the trash (each may appear once per deletion), newest first."""
        return [f.name[: -len(SUFFIX)] for folder in self._trash_folders() for f in folder.glob("*" + SUFFIX)]

    def _trash_folders(self) -> list[Path]:
        trash = self.root / TRASH
        return sorted((p for p in trash.iterdir() if p.is_dir()), reverse=True) if trash.is_dir() else []

    def restore(self, name: str) -> Path:
        """Bring back the most recently deleted embedding of that name; refuses if the name is taken again
        (except by this restore's own copy, left by a kill before the trash folder was removed). The checks
        and the moves run under the store's lock: of two restores of one name the second finds the trash
        empty, and a name stored meanwhile is refused in the same words as one stored before."""
        self._check_folder()
        self._in_trash(name)  # said at once, not after waiting for the lock
        with self._locked():
            folder, path = self._in_trash(name)
            trashed = folder / path.name
            # a restore killed after its copy left the same file in the store and in the trash: finish it
            unfinished = path.is_file() and filecmp.cmp(path, trashed, shallow=False)
            try:
                if path.exists() and not unfinished:
                    raise FileExistsError(path)
                with self._writing(path):
                    if not unfinished:
                        self.check_case_twin(name)
                        _bring_back(trashed, path)  # FileExistsError: stored by a writer without the lock
                    preview = folder / (name + PREVIEW_SUFFIX)
                    if preview.is_file():
                        os.replace(preview, path.with_name(name + PREVIEW_SUFFIX))
                    shutil.rmtree(folder)
            except FileExistsError:
                raise StoreError(
                    f"cannot restore '{name}': an embedding of that name exists; rename it first "
                    f"(`tokensmith rename {name} NEW`)"
                ) from None
            return path

    def _in_trash(self, name: str) -> tuple[Path, Path]:
        """The newest trash folder holding `name`, and the path it is restored to (a name the rules refuse,
        deleted as it was, comes back exactly so); StoreError when no folder holds it."""
        folders = self._trash_folders()
        stray = next((p for f in folders if (p := self.stray_path(name, f)) is not None), None)
        path = self.root / stray.name if stray is not None else self.path(name)
        folder = next((f for f in folders if (f / path.name).is_file()), None)
        if folder is None:
            raise StoreError(f"'{name}' is not in the trash of {self.root}; nothing to restore")
        return folder, path


def _bring_back(trashed: Path, path: Path) -> None:
    """Give the trashed file its name in the store again, never replacing a file there: a hard link needs
    no space (a mistaken `rm` can be undone on a full disk); a copy where the filesystem has no links."""
    try:
        os.link(trashed, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        atomic_write(path, lambda tmp: shutil.copyfile(trashed, tmp), overwrite=False)
