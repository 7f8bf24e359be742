"""`tokensmith push NAME REPO --dry-run DIR`: the upload's files written locally, nothing sent."""

import json
from pathlib import Path

import pytest
import torch
from clirun import run
from PIL import Image

from embeddings import Embedding, Store
from studio.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from tests.fakehub import RecordingApi


class NoNetwork:
    def __init__(self, *args, **kwargs):
        raise AssertionError("a dry run must not reach the hub")


def _stored(home) -> Store:
    store = Store.for_home(home)
    meta = {"trainer": json.dumps({"version": "tokensmith-ti/1", "config": {"images": "/home/ann/cats"}})}
    store.put(Embedding("my-cat", {"emb_params": torch.randn(2, 768)}, {**meta, "steps": "10"}))
    Image.new("RGB", (8, 8), "orange").save(store.preview_path("my-cat"))
    return store


def test_a_dry_run_writes_what_the_upload_would_hold_and_sends_nothing(
    tmp_path, capsys, tokensmith_home, monkeypatch
):
    import huggingface_hub

    store = _stored(tokensmith_home)
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(RecordingApi, "uploads", [])
    assert run(capsys, "push", "my-cat", "me/my-cat", "--license", "mit")[0] == EXIT_OK
    (uploaded,) = RecordingApi.uploads

    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)
    dry = ["--license", "mit", "--dry-run", tmp_path / "d"]
    code, out, err = run(capsys, "push", "my-cat", "me/my-cat", *dry)
    assert code == EXIT_OK and "dry run: nothing was uploaded to me/my-cat" in err
    written = {Path(line).name: Path(line).read_bytes() for line in out.splitlines()}
    assert written == uploaded  # the same card, preview and public copy, byte for byte
    assert sorted(written) == ["README.md", "my-cat.safetensors", "preview.png"]
    assert b"/home/ann" not in written["my-cat.safetensors"]
    assert "/home/ann" in store.get("my-cat").meta["trainer"]  # the store keeps its own metadata


def test_a_dry_run_into_the_store_folder_a_file_or_nothing_is_refused(tmp_path, capsys, tokensmith_home):
    store = _stored(tokensmith_home)
    before = store.path("my-cat").read_bytes()
    code, _out, err = run(capsys, "push", "my-cat", "me/my-cat", "--dry-run", store.root)
    assert code == EXIT_ERROR and "is the store folder" in err
    assert store.path("my-cat").read_bytes() == before
    (tmp_path / "f").write_text("x")
    code, _out, err = run(capsys, "push", "my-cat", "me/my-cat", "--dry-run", tmp_path / "f" / "sub")
    assert code == EXIT_ERROR and "is a file, not a folder: choose another --dry-run folder" in err
    code, _out, err = run(capsys, "push", "my-cat", "me/my-cat", "--dry-run", " ")
    assert code == EXIT_USAGE and "--dry-run is empty" in err


@pytest.mark.parametrize("repo", ["me/x--y", "nope"])
def test_a_dry_run_checks_the_repo_id_like_an_upload(tmp_path, capsys, tokensmith_home, repo):
    _stored(tokensmith_home)
    code, _out, _err = run(capsys, "push", "my-cat", repo, "--dry-run", tmp_path / "d")
    assert code != EXIT_OK and not (tmp_path / "d").exists()


def test_a_dry_run_replaces_no_file_in_its_folder(tmp_path, capsys, tokensmith_home):
    _stored(tokensmith_home)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "README.md").write_text("my project")
    code, _out, err = run(capsys, "push", "my-cat", "me/my-cat", "--dry-run", tmp_path / "proj")
    assert code == EXIT_ERROR and "already holds README.md: give a new or empty folder" in err
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["README.md"]
    assert (tmp_path / "proj" / "README.md").read_text() == "my project"
    assert run(capsys, "push", "my-cat", "me/my-cat", "--dry-run", tmp_path / "d")[0] == EXIT_OK
    code, _out, err = run(capsys, "push", "my-cat", "me/my-cat", "--dry-run", tmp_path / "d")
    assert code == EXIT_ERROR and "already holds my-cat.safetensors, README.md, preview.png" in err
