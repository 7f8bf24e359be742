"""Shared test setup: every test gets its own empty tokensmith home; torch on one thread (faster here)."""

import sys

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


@pytest.fixture
def page_session(tiny_session, monkeypatch):
    """tiny_session as the studio's pages get it: their generation session and loaded model, whatever model
    the page names (so a page test loads no model of its own)."""
    from studio.app import context

    monkeypatch.setattr(context, "generation_session", lambda spec: tiny_session)
    monkeypatch.setattr(context, "loaded_model", lambda spec: tiny_session.model)
    return tiny_session


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random SD1-style pipeline saved as a diffusers folder (what `--model DIR` reads), per module."""
    from trainers.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_pipeline("sd1").save_pretrained(folder)
    return str(folder)


@pytest.fixture
def cat_stored(tokensmith_home):
    """The test's store with one embedding, <cat> (1 vector of the tiny pipeline's width, 32)."""
    from embeddings import Embedding, Store

    store = Store.for_home(tokensmith_home)
    store.put(
        Embedding("cat", {"emb_params": torch.randn(1, 32, generator=torch.Generator().manual_seed(3))})
    )
    return store


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    """The studio's jobs run tests/trainpage.py's stand-in trainer instead of `tokensmith train`."""
    import studio.jobs
    from tests.trainpage import FAKE_TRAINER

    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    monkeypatch.setattr(studio.jobs, "TRAINER_COMMAND", (sys.executable, str(script)))
    return script


@pytest.fixture
def cat_dog_store(tokensmith_home, tiny_session):
    """The test home's store holding <cat> and <dog> (2 vectors each, seeds 0 and 1, init 'object') at the
    tiny model's width: what the Inspect and Lab pages' tests read."""
    from embeddings import Embedding, Store

    width = tiny_session.model.widths["emb_params"]
    store = Store.for_home(tokensmith_home)
    for seed, name in enumerate(["cat", "dog"]):
        vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(seed))
        store.put(Embedding(name, {"emb_params": vectors}, {"init": "object"}))
    return store
