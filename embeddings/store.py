"""The store: a folder of canonical files (`<name>.safetensors`) and previews; the folder is the database.

Layout under the root (default `$TOKENSMITH_HOME/embeddings`):

    <name>.safetensors          the embedding (canonical file)
    <name>.preview.png          its thumbnail, optional
    .trash/<stamp>/<name>.*     deleted embeddings, restorable
    .<file>.<pid>.<rand>.tmp    a write in progress (never listed; removed on failure, and by a later write
                                once its process is gone and it is an hour old)

Writes are atomic (temp file, fsync, rename); creating a name uses a hard link so two writers can never both
create it; an existing name is only replaced with `overwrite=True`. The check for a name that differs from a
stored one only in letter case and the write after it run under an exclusive lock on the store folder, so two
writers cannot slip 'dog' and 'Dog' in side by side; an import holds it for a run of puts (`StoreBatch`), so
it reads the folder once per run, not once per file. A rename (from its read of the old file to its removal),
a delete and a restore hold it too: none removes or replaces what another writer stored meanwhile. A writer
that waits long for the lock says so once (`on_wait`). A rename killed halfway (the new name linked, the old
not yet removed) is finished by running the same rename again.

A file copied in by hand under a name the rules refuse ('EasyNegative (1).safetensors') is reported by `list`
as a problem, not listed; `rename` and `delete` accept its exact stem, so it can be given a valid name or be
trashed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import fcntl
except ImportError:  # Windows: no flock; its filesystems are case-insensitive: 'dog' and 'Dog' are one file
    fcntl = None

from embeddings.canonical import canonical_bytes, load_canonical, read_header
from embeddings.errors import EmbeddingFormatError, StoreError
from embeddings.files import (
    PREVIEW_SUFFIX,
    SUFFIX,
    atomic_write_bytes,
    remove_stale_temps,
    remove_temp,
    say_on_stderr,
    wait_for_lock,
    write_temp,
)
from embeddings.listing import Listing
from embeddings.names import is_valid_name, stray_name_error, validate_name
from embeddings.storewrites import png_bytes, put_pair, write_error
from embeddings.trash import Trash

if TYPE_CHECKING:
    from PIL.Image import Image

    from embeddings.storebatch import StoreBatch
    from embeddings.value import Embedding

# Header keys a rename changes; two files that differ only in these hold the same embedding.
NAME_KEYS = ("name",)
_HELD = threading.local()  # per thread: the store folders whose lock it holds (Store._locked)


class Store(Listing, Trash):
    """put/get/list/rename/delete/restore for embeddings kept as files under `root`.

    `on_wait` is told, once, when a write has waited LOCK_QUIET_S for another process that holds the store's
    lock (a suspended import): stderr by default, for the CLI and a trainer's log; None says nothing (the
    studio, whose terminal is not the user's).
    """

    def __init__(self, root: Path, *, on_wait: Callable[[str], None] | None = say_on_stderr) -> None:
        self.root = Path(root)
        self.on_wait = on_wait

    @classmethod
    def for_home(cls, home: Path, *, on_wait: Callable[[str], None] | None = say_on_stderr) -> Store:
        return cls(Path(home) / "embeddings", on_wait=on_wait)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # --- paths ---
    def path(self, name: str) -> Path:
        return self.root / (validate_name(name) + SUFFIX)

    def preview_path(self, name: str) -> Path:
        return self.root / (validate_name(name) + PREVIEW_SUFFIX)

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def stray_path(self, name: str, folder: Path | None = None) -> Path | None:
        """The file `<name>.safetensors` in `folder` (the store root) when `name` breaks the naming rules but
        a file of exactly that stem is there (copied in by hand: 'EasyNegative (1)', 'CON'), else None.

        The stem is matched against the folder's own listing, so no name can reach outside the folder.
        """
        folder = self.root if folder is None else folder
        if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or os.sep in name:
            return None
        try:
            validate_name(name)
            return None  # a valid name is found by `path`
        except StoreError:
            pass
        file_name = name + SUFFIX
        try:
            listed = file_name in os.listdir(folder)
        except OSError:
            return None
        return folder / file_name if listed and (folder / file_name).is_file() else None

    def stored_file(self, name: str) -> Path | None:
        """The file holding `name` (also a file under a name the rules refuse, see `stray_path`), or None."""
        stray = self.stray_path(name)
        if stray is not None:
            return stray
        try:
            path = self.path(name)
        except StoreError:
            return None
        return path if path.is_file() else None

    def resolve(self, name: str) -> str:
        """`name` as stored: itself when stored, else the one stored name equal to it in letter case aside
        (prompts match `<cat>` to 'Cat', so `show cat` finds it too); otherwise `name` unchanged."""
        if not is_valid_name(name) or self.exists(name):
            return name
        folded = [n for n in self.names() if n.lower() == name.lower()]
        return folded[0] if len(folded) == 1 else name

    def holds(self, emb: Embedding) -> bool:
        """True if `emb.name` is stored with exactly `emb`'s vectors (their sha256; metadata aside).

        A stored file that is unreadable or corrupted does not hold them.
        """
        if not self.exists(emb.name):
            return False
        try:
            return self.get(emb.name).sha256 == emb.sha256
        except (EmbeddingFormatError, OSError):
            return False

    def _check_folder(self) -> None:
        """StoreError if a file, or a link to nothing, stands where the store folder (or one above it) should
        be."""
        for folder in (self.root, *self.root.parents):
            if folder.is_symlink() and not folder.exists():
                raise StoreError(
                    f"the store folder {self.root} cannot be made: {folder} is a link to "
                    f"{os.readlink(folder)}, which does not exist (a disk that is not mounted?); mount or "
                    "fix it, or use another store (--home DIR or TOKENSMITH_HOME)"
                )
            if folder.exists():
                if folder.is_dir():
                    return
                where = "is" if folder == self.root else f"cannot be made: {folder} is"
                raise StoreError(
                    f"the store folder {self.root} {where} a file, not a folder; move or rename that file, "
                    "or use another store (--home DIR or TOKENSMITH_HOME)"
                )

    @contextmanager
    def _writing(self, target: Path, doing: str = "write") -> Iterator[None]:
        """Turn an OSError while writing `target` into one that names it and says what to do."""
        try:
            yield
        except FileExistsError:
            raise
        except OSError as exc:
            raise write_error(target, self.root, exc, doing) from None

    def _require(self, name: str, *, stray_ok: bool = False) -> Path:
        """The file of stored `name`, or StoreError saying what is wrong. `stray_ok` also accepts the exact
        stem of a file whose name breaks the rules (for rename and delete: the ways out)."""
        stray = self.stray_path(name)
        if stray is not None:
            if stray_ok:
                return stray
            raise stray_name_error(name)
        path = self.path(name)
        if not path.is_file():
            raise self._missing(name)
        return path

    def _missing(self, name: str) -> StoreError:
        """The error for a name the store does not hold (a folder that cannot be one says so instead)."""
        self._check_folder()
        hint = self._suggest(name)
        return StoreError(f"no embedding named '{name}' in {self.root}{hint}; `tokensmith list` shows them")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on the store folder for a check-then-write (the case-twin rule, a rename's read
        and removal of the old name): other writers of this store wait, and one that waits long says so
        (`on_wait`). Best effort where the filesystem has no flock (some network mounts)."""
        if fcntl is None:
            yield
            return
        held = _HELD.__dict__.setdefault("folders", set())  # the folders this thread holds the lock on
        folder = self.root.resolve()
        if folder in held:  # a second flock on another descriptor would wait for this thread forever
            raise RuntimeError(
                f"this thread already holds the lock on {self.root} (a StoreBatch is open): write through it"
            )
        with self._writing(self.root):
            fd = os.open(self.root, os.O_RDONLY)
        try:
            wait_for_lock(fd, self.root, self.on_wait)
            held.add(folder)
            try:
                yield
            finally:
                held.discard(folder)
        finally:
            os.close(fd)  # releases the lock

    def _suggest(self, name: str) -> str:
        """' (did you mean cat, Cats?)' for names like `name`; never `name` itself (stored again since it was
        found missing: a rename back, a restore)."""
        close = [n for n in self.names() if n != name and name.lower() in n.lower()]
        return f" (did you mean {', '.join(close[:3])}?)" if close else ""

    @contextmanager
    def _scanned_under_lock(self) -> Iterator[dict[str, list[str]]]:
        """The lock on the folder and, made under it, the scan the letter-case check reads (`folded_names`);
        what killed writes left behind is cleared first."""
        remove_stale_temps(self.root)
        with self._locked():
            yield self.folded_names()

    # --- writing ---
    def put(self, emb: Embedding, *, overwrite: bool = False, preview: Image | None = None) -> Path:
        """Store `emb` under its name; an existing name raises StoreError unless overwrite=True.

        `preview` (a PIL image) is saved beside it as `<name>.preview.png`. The store never shows one
        embedding's thumbnail beside another's: the new thumbnail is written before anything changes, and the
        one there (the replaced embedding's, or one a killed `delete` left) is moved aside while the new
        embedding takes its name. A failure (a full disk) leaves both old files as they were; a kill leaves
        no thumbnail rather than a wrong one. Many puts in a row (an import) go through `batch`.
        """
        return self._put(emb, overwrite=overwrite, preview=preview, batch=None)

    def batch(self) -> StoreBatch:
        """A writer of many embeddings that locks and scans the folder once per run of puts, not once per
        put: `with store.batch() as batch: batch.put(emb)` (see StoreBatch)."""
        from embeddings.storebatch import StoreBatch

        return StoreBatch(self)

    def _put(
        self, emb: Embedding, *, overwrite: bool, preview: Image | None, batch: StoreBatch | None
    ) -> Path:
        """`put`, under its own lock and scan, or under those `batch` holds."""
        path, preview_path = self.path(emb.name), self.preview_path(emb.name)
        self._check_folder()
        if batch is None:  # a batch checks under the lock only, where its check is a look-up, not a scan
            self.check_case_twin(emb.name)  # early, before the bytes are made; again under the lock below
        data = canonical_bytes(emb)
        with self._writing(self.root):  # not the name-taken error below: a broken link there is no embedding
            self.root.mkdir(parents=True, exist_ok=True)
        new_preview = None
        try:
            if preview is not None:
                png = png_bytes(preview)
                with self._writing(preview_path):
                    new_preview = write_temp(preview_path, lambda tmp: tmp.write_bytes(png))
            guard = self._scanned_under_lock() if batch is None else batch.scanned()
            with guard as folded:
                self.check_case_twin(emb.name, folded=folded)
                if not overwrite and path.exists():
                    raise FileExistsError(path)
                with self._writing(path):
                    put_pair(path, data, preview_path, new_preview, overwrite=overwrite)
                folded.setdefault(emb.name.lower(), []).append(emb.name)  # what a batch's next put checks
        except FileExistsError:
            raise StoreError(
                f"an embedding named '{emb.name}' already exists; choose another name or pass --force "
                "(overwrite=True) to replace it"
            ) from None
        finally:
            if new_preview is not None:
                remove_temp(new_preview)  # gone already when it took its name
        return path

    def set_preview(self, name: str, image: Image) -> Path:
        """Attach (or replace) the thumbnail of a stored embedding."""
        self._require(name)
        png = png_bytes(image)
        with self._writing(self.preview_path(name)):
            return atomic_write_bytes(self.preview_path(name), png)

    # --- reading ---
    def get(self, name: str) -> Embedding:
        try:
            return load_canonical(self._require(name))
        except FileNotFoundError:  # renamed or deleted by another process since `_require` found it
            raise self._missing(name) from None

    # --- moving ---
    def rename(self, old: str, new: str) -> Path:
        """Give a stored embedding a new name (its header `name` follows); never replaces an existing one.

        The steps are: create `new`, move the preview, remove `old`. If a kill stopped them halfway, `new`
        holds the same embedding as `old` apart from its name, and running the same rename again finishes it.
        All of it runs under the store's lock, from the read of `old` to its removal: what another process
        stores under `old` meanwhile (`import --force`) is renamed or left alone, never removed unread, and
        of two renames of one name the second finds it gone.
        """
        validate_name(new)
        self._require(old, stray_ok=True)  # said at once, not after waiting for the lock
        if new == old:
            raise StoreError(f"'{old}' is already called '{new}'; nothing to rename")
        self.check_case_twin(new, allow=old)  # 'cat' -> 'Cat' is fine; onto another embedding is not
        with self._locked():
            old_path = self._require(old, stray_ok=True)  # a hand-copied 'EasyNegative (1)' gets a valid name
            try:
                emb = load_canonical(old_path)
            except FileNotFoundError:  # only a writer without the lock (a filesystem with no flock)
                raise self._missing(old) from None
            if self.exists(new) and not self._unfinished_rename(emb, old, new):
                raise StoreError(f"cannot rename '{old}' to '{new}': '{new}' already exists; remove it first")
            with self._writing(self.path(new)):
                if not self.exists(new):
                    self.check_case_twin(new, allow=old)  # again, under the lock
                    try:
                        atomic_write_bytes(
                            self.path(new), canonical_bytes(emb.with_name(new)), overwrite=False
                        )
                    except FileExistsError:
                        raise StoreError(
                            f"cannot rename '{old}' to '{new}': '{new}' was created meanwhile"
                        ) from None
                old_preview = old_path.with_name(old + PREVIEW_SUFFIX)
                if old_preview.is_file():
                    os.replace(old_preview, self.preview_path(new))
                old_path.unlink(missing_ok=True)
        return self.path(new)

    def _unfinished_rename(self, emb: Embedding, old: str, new: str) -> bool:
        """True if `new` is what a killed `rename(old, new)` left behind.

        That is `emb` (stored as `old`) under the new name: the same vectors and metadata apart from the name,
        and the preview on one side at most.
        """
        old_path = self.stray_path(old) or self.path(old)
        if old_path.with_name(old + PREVIEW_SUFFIX).is_file() and self.preview_path(new).is_file():
            return False  # the rename moves the preview in one step: both sides never have one
        try:
            if old_path.samefile(self.path(new)):  # one file: a case-insensitive filesystem's 'Cat'
                return False
            stored = self.get(new)
        except (EmbeddingFormatError, OSError):
            return False
        header = read_header(self.path(new)).get("__metadata__") or {}
        if header.get("name") != new:  # the rename writes the new name into the header it creates
            return False

        def unnamed(e: Embedding) -> dict[str, str]:
            return {k: v for k, v in e.meta.items() if k not in NAME_KEYS}

        return stored.sha256 == emb.sha256 and unnamed(stored) == unnamed(emb)
