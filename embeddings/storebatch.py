"""Many puts in a row (an import): `Store.batch()` locks and scans the store folder once per run of puts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

    from embeddings.store import Store
    from embeddings.value import Embedding


# Puts a StoreBatch makes under one hold of the lock (a few seconds of writes): other writers wait that long.
LOCK_RUN = 256


class StoreBatch:
    """`Store.put` for many embeddings (an import): the lock on the store folder is taken, and the folder
    scanned for the letter-case check, once per LOCK_RUN puts rather than for every put, so storing M files
    into a store of N reads the folder about M / LOCK_RUN + 1 times, not 3 M times.

    The check is as safe as `put`'s: the scan is made under the lock, and while the batch holds the lock only
    the batch writes (and adds what it stores to the scan). Letting go every LOCK_RUN puts means another
    writer (a training run storing its result) waits for one run, not the whole import. Inside the `with`,
    write to this store only through the batch: the store's own locked calls (put, rename, delete, restore) in
    the same thread raise RuntimeError rather than wait for the lock the batch holds.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._held: contextlib.ExitStack | None = None
        self._folded: dict[str, list[str]] = {}
        self._puts = 0

    def __enter__(self) -> StoreBatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def put(self, emb: Embedding, *, overwrite: bool = False, preview: Image | None = None) -> Path:
        """`Store.put`, under the batch's lock and scan."""
        return self.store._put(emb, overwrite=overwrite, preview=preview, batch=self)

    @contextmanager
    def scanned(self) -> Iterator[dict[str, list[str]]]:
        """The lock, held since the run began (or taken now, with a fresh scan), and the run's scan."""
        if self._puts >= LOCK_RUN:
            self.release()  # let other writers in; the next run scans again
        if self._held is None:
            with contextlib.ExitStack() as held:
                self._folded = held.enter_context(self.store._scanned_under_lock())
                self._held, self._puts = held.pop_all(), 0
        self._puts += 1
        yield self._folded

    def release(self) -> None:
        """Let go of the lock; the next put takes it again."""
        if self._held is not None:
            held, self._held = self._held, None
            held.close()
