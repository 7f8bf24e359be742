"""Helpers for the store's race tests: small embeddings and a way to make another writer act, in a thread
with its own Store, at the one point where it used to slip in."""

import fcntl
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from embeddings import Embedding

RED, GREEN = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 255, 0))


def emb(name: str, value: float) -> Embedding:
    return Embedding(name, {"emb_params": torch.full((2, 64), value)})


def value(e: Embedding) -> float:
    return float(e.vectors["emb_params"][0, 0])


def colour(path: Path) -> tuple[int, ...]:
    with Image.open(path) as image:
        return image.getpixel((0, 0))[:3]


class Meanwhile:
    """Run `action` in a thread, as another process would, and return once it has finished or is waiting
    for a flock that this thread holds (its own store write, or the runs/ start lock)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[threading.Thread] = []
        self.results: list[object] = []
        self._settled = threading.Event()
        real_flock = fcntl.flock

        def flock(fd: int, op: int) -> None:
            if threading.current_thread() not in self.threads:
                return real_flock(fd, op)
            try:
                return real_flock(fd, op | fcntl.LOCK_NB)
            except BlockingIOError:
                self._settled.set()  # the other writer waits for the lock: this side goes on
                if op & fcntl.LOCK_NB:
                    raise
            return real_flock(fd, op)

        monkeypatch.setattr(fcntl, "flock", flock)

    def run(self, action) -> None:
        def body() -> None:
            try:
                self.results.append(action())
            except Exception as exc:  # the other writer's refusal is part of what the test checks
                self.results.append(exc)
            finally:
                self._settled.set()

        thread = threading.Thread(target=body, daemon=True)
        self.threads.append(thread)
        self._settled.clear()
        thread.start()
        assert self._settled.wait(20), "the other writer neither finished nor waited for the lock"

    def join(self) -> list[object]:
        for thread in self.threads:
            thread.join(20)
            assert not thread.is_alive()
        return self.results


def after_first_call(monkeypatch, owner, name: str, then) -> None:
    """Patch `owner.name` so that `then()` runs once, right after its first call (in this thread) returns."""
    real, done = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if not done and threading.current_thread() is threading.main_thread():
            done.append(True)
            then()
        return result

    monkeypatch.setattr(owner, name, wrapper)
