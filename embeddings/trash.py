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
        thumbnail without its embedding (which a later embedding of that name would show). The folder's
        name holds the time of the deletion; nothing else is recorded.
        """
        path = self._require(name, stray_ok=True)  # a hand-copied file under a refused name can be trashed
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
        (except by this restore's own copy, left by a kill before the trash folder was removed)."""
        folders = self._trash_folders()
        stray = next((p for f in folders if (p := self.stray_path(name, f)) is not None), None)
        path = self.root / stray.name if stray is not None else self.path(name)  # undo a delete exactly
        self._check_folder()
        for folder in folders:
            trashed = folder / path.name
            if not trashed.is_file():
                continue
            # a restore killed after its copy left the same file in the store and in the trash: finish it
            unfinished = path.is_file() and filecmp.cmp(path, trashed, shallow=False)
            if path.exists() and not unfinished:
                raise StoreError(
                    f"cannot restore '{name}': an embedding of that name exists; rename it first "
                    f"(`tokensmith rename {name} NEW`)"
                )
            self.check_case_twin(name)
            with self._locked(), self._writing(path):
                if not unfinished:
                    self.check_case_twin(name)  # again, under the lock
                    _bring_back(trashed, path)
                preview = folder / (name + PREVIEW_SUFFIX)
                if preview.is_file():
                    os.replace(preview, path.with_name(name + PREVIEW_SUFFIX))
                shutil.rmtree(folder)
            return path
        raise StoreError(f"'{name}' is not in the trash of {self.root}; nothing to restore")


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
