"""Helpers for the full-disk tests: a write that meets a full disk, embeddings to store, hidden files."""

import errno
import os
from pathlib import Path

import torch
from PIL import Image

from embeddings import Embedding

NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def emb(name: str, value: float) -> Embedding:
    return Embedding(name, {"emb_params": torch.full((1, 32), value)})


def no_space_for(monkeypatch, words: str, method: str = "write_bytes") -> None:
    """Path.`method` raises ENOSPC for files whose name holds `words` (a temp file's holds its file's)."""
    real = getattr(Path, method)

    def write(self, *args, **kwargs):
        if words in self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, write)


def half_saved_then_full(monkeypatch, words: str) -> None:
    """PIL's save writes part of a file whose name holds `words`, then meets a full disk."""
    real = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if words in str(fp):
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))
