"""The store's trash: `delete` moves an embedding (and its preview) into `.trash/<stamp>/`, `restore` brings
the newest deleted copy back. Mixed into Store (embeddings/store.py), whose name rules, folder lock and
atomic writes it uses, so a restore obeys the same letter-case rule as a put."""

from __future__ import annotations

import filecmp
import json
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
        """Move an embedding (and its preview) to the trash; returns its trash folder. `restore` undoes it."""
        path = self._require(name, stray_ok=True)  # a hand-copied file under a refused name can be trashed
        folder = self.root / TRASH / f"{time.time_ns():020d}-{os.getpid()}"
        with self._writing(path, "move to the trash"):
            folder.mkdir(parents=True, exist_ok=False)
            os.replace(path, folder / path.name)
            preview = path.with_name(name + PREVIEW_SUFFIX)
            if preview.is_file():
                os.replace(preview, folder / preview.name)
            (folder / "deleted.json").write_text(json.dumps({"name": name, "deleted": time.time()}))
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
                    atomic_write(path, lambda tmp, src=trashed: shutil.copyfile(src, tmp), overwrite=False)
                preview = folder / (name + PREVIEW_SUFFIX)
                if preview.is_file():
                    os.replace(preview, path.with_name(name + PREVIEW_SUFFIX))
                shutil.rmtree(folder)
            return path
        raise StoreError(f"'{name}' is not in the trash of {self.root}; nothing to restore")
