"""Shared test setup: every test gets its own empty tokensmith home; torch on one thread (faster here)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def tokensmith_home(tmp_path, monkeypatch):
    """An empty $TOKENSMITH_HOME per test, so no test sees another's store or the user's own."""
    home = tmp_path / "tokensmith-home"
    monkeypatch.setenv("TOKENSMITH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="module")
def tiny_session():
    """A generation Session over a tiny random SD1-style pipeline, built once per test module."""
    from studio.generation import Session
    from trainers.models import LoadedModel
    from trainers.tiny import tiny_pipeline

    return Session(LoadedModel(tiny_pipeline("sd1"), "sd1", "tiny-sd1"))
