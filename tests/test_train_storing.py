"""How a run meets its store and its disk: what the store would refuse is refused before any model loads (a
name that differs from a stored one only in letter case, a store folder that is a file or read-only); a name
another run stored meanwhile, and a full disk, end the run with one line that says how to keep its result;
a run killed between its store write and its `done` event is finished by --resume without training again."""

import errno
import os

import pytest
import torch
from safetensors import SafetensorError
from tinyrun import quick_config, square_images, tiny_model

from embeddings import Embedding, Store
from embeddings.errors import TokensmithError
from trainers import train
from trainers import trainer as trainer_module
from trainers.runfolder import RunFolder


@pytest.fixture
def no_model(monkeypatch):
    """A run that gets as far as loading its model fails the test: its refusal came too late."""

    def load(cfg):
        raise AssertionError("the model was loaded: the refusal should come first")

    monkeypatch.setattr(trainer_module, "_load", load)


def _store_other(home, name):
    Store.for_home(home).put(Embedding(name, {"emb_params": torch.ones(1, 32)}))


# --- refused before the model loads ---


def test_a_name_that_differs_from_a_stored_one_only_in_case_is_refused_with_advice_that_works(
    tmp_path, no_model
):
    images = square_images(tmp_path / "images")
    _store_other(tmp_path / "home", "thing")
    cfg = quick_config(images, tmp_path / "run", name="THING", model="tiny")
    with pytest.raises(TokensmithError) as fresh:
        train(cfg, home=tmp_path / "home")
    said = str(fresh.value)
    assert "'thing' is already stored and differs from 'THING' only in letter case" in said
    assert "start the run with another --name, or with --name thing --overwrite" in said
    with pytest.raises(TokensmithError) as resumed:  # the name is the run's: another --name cannot resume it
        train(cfg.replace(resume=True), home=tmp_path / "home")
    assert "move the stored one aside first (`tokensmith rename thing NEW` or `tokensmith rm thing`)" in str(
        resumed.value
    )


def test_a_file_where_the_store_folder_should_be_is_refused_before_training(tmp_path, no_model):
    images = square_images(tmp_path / "images")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "embeddings").write_text("not a folder")
    said = r"embeddings is a file, where the store keeps trained embeddings in a folder"
    with pytest.raises(TokensmithError, match=said):
        train(quick_config(images, tmp_path / "run", model="tiny"), home=tmp_path / "home")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_store_folder_is_refused_before_training(tmp_path, no_model):
    images = square_images(tmp_path / "images")
    store = tmp_path / "home" / "embeddings"
    store.mkdir(parents=True)
    store.chmod(0o555)
    try:
        with pytest.raises(TokensmithError, match=r"cannot write in .*embeddings \(Permission denied\)"):
            train(quick_config(images, tmp_path / "run", model="tiny"), home=tmp_path / "home")
    finally:
        store.chmod(0o755)


def test_a_store_on_a_read_only_filesystem_is_refused_before_training(tmp_path, no_model, monkeypatch):
    """What a write meets on a disk mounted read-only (root included, unlike the permission test above)."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    images = square_images(tmp_path / "images")
    (tmp_path / "home" / "embeddings").mkdir(parents=True)
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(TokensmithError, match=r"cannot write in .*embeddings \(Read-only file system\)"):
        train(quick_config(images, tmp_path / "run", model="tiny"), home=tmp_path / "home")


# --- a name stored by another run meanwhile ---


def test_a_name_stored_by_another_run_meanwhile_keeps_this_runs_result_for_a_resume(tmp_path, monkeypatch):
    images = square_images(tmp_path / "images")
    home, run = tmp_path / "home", tmp_path / "run"
    put = Store.put

    def another_run_first(self, emb, **kwargs):
        put(self, Embedding(emb.name, {"emb_params": torch.ones(1, 32)}))
        return put(self, emb, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Store, "put", another_run_first)
        with pytest.raises(TokensmithError) as lost:
            train(quick_config(images, run), home=home, model=tiny_model("sd1"))
    said = str(lost.value)
    final = run / "snapshots" / "final.safetensors"
    assert "an embedding named 'thing' was stored meanwhile (by another run or an import)" in said
    assert f"kept in {final}: to store it in place of that one, run `tokensmith train --run-dir {run}" in said
    assert "--resume --overwrite`, or import it under another name (`tokensmith import" in said
    assert "--force" not in said
    assert RunFolder(run).read_progress()[-1] == {"event": "failed", "message": said, "name": "thing"}
    # the advice works: the resume stores this run's result in place of the other one
    resumed = train(
        quick_config(images, run, resume=True, overwrite=True), home=home, model=tiny_model("sd1")
    )
    stored = Store.for_home(home).get("thing")
    assert stored.sha256 == resumed.sha256 == Store(run / "snapshots").get("final").sha256


# --- killed between the store write and the `done` event ---


def _killed_after_store_write(tmp_path):
    """A finished run with its `done` event cut off: what a SIGKILL right after the store write leaves."""
    images = square_images(tmp_path / "images")
    run = tmp_path / "run"
    train(quick_config(images, run), home=tmp_path / "home", model=tiny_model("sd1"))
    folder = RunFolder(run)
    done = folder.read_progress()[-1]
    lines = folder.progress_path.read_text().splitlines(keepends=True)
    folder.progress_path.write_text("".join(lines[:-1]))
    return images, run, done


def test_a_run_killed_after_its_store_write_is_finished_by_resume_without_training(tmp_path, monkeypatch):
    images, run, done = _killed_after_store_write(tmp_path)
    stored_file = Store.for_home(tmp_path / "home").path("thing")
    before = stored_file.read_bytes()

    def prepare(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(trainer_module.Steps, "prepare", prepare)
    emb = train(quick_config(images, run, resume=True), home=tmp_path / "home", model=tiny_model("sd1"))
    assert stored_file.read_bytes() == before
    assert emb.sha256 == Store.for_home(tmp_path / "home").get("thing").sha256
    assert RunFolder(run).read_progress()[-1] == done  # the same `done` event the run would have written


def test_a_stored_file_that_is_not_this_runs_result_still_needs_overwrite(tmp_path):
    images, run, _done = _killed_after_store_write(tmp_path)
    # the run's config asks for more steps (a run trained further, killed before its new result)
    with pytest.raises(TokensmithError, match="'thing' is already stored; pass --overwrite"):
        train(
            quick_config(images, run, resume=True, steps=9), home=tmp_path / "home", model=tiny_model("sd1")
        )
    Store.for_home(tmp_path / "home").put(
        Embedding("thing", {"emb_params": torch.ones(1, 32)}), overwrite=True
    )
    with pytest.raises(TokensmithError, match="'thing' is already stored; pass --overwrite"):
        train(quick_config(images, run, resume=True), home=tmp_path / "home", model=tiny_model("sd1"))


# --- a full disk ---


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _torch_zip_writer_fails(*args, **kwargs):  # torch.save says no more when the disk is full
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


def _safetensors_fails(*args, **kwargs):
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize(
    "target, failing, what",
    [
        ("accelerate.Accelerator.save_state", _torch_zip_writer_fails, "the checkpoint of step 3"),
        ("trainers.session.save_canonical", _safetensors_fails, "the snapshot of step 3"),
        ("trainers.latents.save_file", _safetensors_fails, "the latent cache"),
        ("embeddings.Store.put", _no_space, "the stored file of 'thing'"),
    ],
)
def test_a_full_disk_is_one_line_naming_the_write_and_resume_continues(
    tmp_path, monkeypatch, target, failing, what
):
    images = square_images(tmp_path / "images")
    home, run = tmp_path / "home", tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(target, failing)
        patch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": 0})())
        with pytest.raises(TokensmithError) as full:
            train(quick_config(images, run), home=home, model=tiny_model("sd1"))
    said = str(full.value)
    assert said.startswith(f"the disk is full while writing {what} ("), said
    assert f"free space there and run `tokensmith train --run-dir {run} --home {home} --resume`" in said
    assert "\n" not in said  # one line, which still quotes what the writer said (the cause may be another)
    assert "No space left on device" in said or "unexpected pos 64 vs 0" in said
    assert RunFolder(run).read_progress()[-1] == {"event": "failed", "message": said, "name": "thing"}
    assert [p.name for p in run.rglob(".*")] == []  # no half-written temp file or folder left
    emb = train(quick_config(images, run, resume=True), home=home, model=tiny_model("sd1"))
    assert Store.for_home(home).get("thing").sha256 == emb.sha256


def test_a_run_file_that_cannot_be_written_leaves_no_temp_file(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run")
    folder.create(resume=False)
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(TokensmithError, match=r"the disk is full while writing the run's config.toml"):
        folder.write_config("steps = 6\n", ["tokensmith train --steps 6"])
    assert sorted(p.name for p in folder.root.iterdir()) == ["checkpoints", "previews", "snapshots"]
    with pytest.raises(TokensmithError, match=r"the disk is full while writing the run's progress.jsonl"):
        folder.event("failed", "x" * 100)
    assert folder.progress_path.read_bytes() == b""  # no torn line for the next record to follow


def test_a_failed_checkpoint_write_with_space_left_is_not_called_a_full_disk(tmp_path, monkeypatch):
    images = square_images(tmp_path / "images")
    monkeypatch.setattr("accelerate.Accelerator.save_state", _torch_zip_writer_fails)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        train(quick_config(images, tmp_path / "run"), home=tmp_path / "home", model=tiny_model("sd1"))


def test_another_error_while_saving_on_a_nearly_full_disk_is_not_called_a_full_disk(tmp_path, monkeypatch):
    """Only torch's zip-writer words are taken for a full disk when little space is left: a lost peer or a
    device error while saving keeps its own message."""

    def peer_lost(*args, **kwargs):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")

    images = square_images(tmp_path / "images")
    monkeypatch.setattr("accelerate.Accelerator.save_state", peer_lost)
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": 0})())
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        train(quick_config(images, tmp_path / "run"), home=tmp_path / "home", model=tiny_model("sd1"))
