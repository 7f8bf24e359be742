"""How a run ends when something goes wrong at its end: killed after it stopped early or after its last step
(the resume ends there, with the same embedding, preview and scores), a Cancel during the last step (stored),
a failed upload (the run is done and stored; `tokensmith push` uploads it again), running out of memory (one
line naming the settings that need less)."""

import json
import os
import shlex
import signal
import typing
from types import SimpleNamespace

import pytest
import torch
from tinyrun import quick_config, square_images, tiny_model

from embeddings import Store
from embeddings.errors import TokensmithError
from studio.cli import EXIT_OK, main
from trainers import steps as steps_module
from trainers import train
from trainers.hub import UploadError
from trainers.runfolder import RunFolder


class Crash(Exception):
    """A kill between the last checkpoint and the store write."""


def _crash_once_at_put(monkeypatch):
    monkeypatch.setattr(Store, "put", lambda *args, **kwargs: (_ for _ in ()).throw(Crash("killed")))


def _two_runs(tmp_path, monkeypatch, **changes):
    """(uninterrupted embedding, the same run killed before its store write and then resumed)."""
    images = square_images(tmp_path / "images")
    whole = train(
        quick_config(images, tmp_path / "whole", **changes), home=tmp_path / "a", model=tiny_model("sd1")
    )
    with monkeypatch.context() as patch:
        _crash_once_at_put(patch)
        with pytest.raises(Crash):
            train(
                quick_config(images, tmp_path / "run", **changes),
                home=tmp_path / "b",
                model=tiny_model("sd1"),
            )
    resumed = train(
        quick_config(images, tmp_path / "run", resume=True, **changes),
        home=tmp_path / "b",
        model=tiny_model("sd1"),
    )
    return whole, resumed


def test_a_run_killed_after_it_stopped_early_ends_there_when_resumed(tmp_path, monkeypatch):
    # window 1 and a huge threshold: the stopper says stop at the second validation (step 2 of 6)
    changes = dict(validate_every=1, save_every=1, dvar_window=1, dvar_threshold=100.0, min_steps=0)
    whole, resumed = _two_runs(tmp_path, monkeypatch, **changes)
    assert json.loads(whole.meta["trainer"])["end"] == "early_stopped"
    for emb in (whole, resumed):
        assert json.loads(emb.meta["trainer"])["trained_steps"] == 2
    assert torch.equal(whole.vectors["emb_params"], resumed.vectors["emb_params"])
    done = RunFolder(tmp_path / "run").read_progress()[-1]
    assert (done["event"], done["steps"], done["reason"]) == ("done", 2, "early_stopped")


def test_a_run_killed_after_its_last_step_stores_the_same_preview_and_scores(tmp_path, monkeypatch):
    whole, resumed = _two_runs(tmp_path, monkeypatch, early_stopping=False, keep="last")
    assert torch.equal(whole.vectors["emb_params"], resumed.vectors["emb_params"])
    metrics = json.loads(resumed.meta["metrics"])
    assert metrics["val_loss"] is not None and metrics == json.loads(whole.meta["metrics"])
    store = Store.for_home(tmp_path / "b")
    assert (
        store.preview_path("thing").read_bytes()
        == Store.for_home(tmp_path / "a").preview_path("thing").read_bytes()
    )


def test_a_cancel_during_the_last_step_stores_the_finished_run(tmp_path):
    images = square_images(tmp_path / "images")
    cfg = quick_config(images, tmp_path / "run", early_stopping=False)

    def cancel_at_the_end(record):
        if record.get("step") == cfg.steps and "event" not in record:
            os.kill(os.getpid(), signal.SIGTERM)  # the UI's Cancel, as the last step is logged

    train(cfg, home=tmp_path / "home", model=tiny_model("sd1"), on_progress=cancel_at_the_end)
    assert Store.for_home(tmp_path / "home").exists("thing")
    done = RunFolder(tmp_path / "run").read_progress()[-1]
    assert (done["event"], done["reason"]) == ("done", "finished")


class NetworkDown(Exception):
    """Like httpx's ConnectError: not an OSError."""


class OfflineApi:
    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        raise NetworkDown("[Errno -2] Name or service not known")


class RecordingApi:
    uploads: typing.ClassVar[list] = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        pass

    def repo_info(self, repo_id, **kwargs):  # a new repo: no files yet
        return SimpleNamespace(private=False, siblings=[])

    def upload_folder(self, *, repo_id, folder_path, commit_message, delete_patterns=None):
        RecordingApi.uploads.append((repo_id, sorted(os.listdir(folder_path))))


def test_a_failed_upload_leaves_the_run_done_and_stored_and_push_sends_it_later(
    tmp_path, monkeypatch, capsys
):
    import huggingface_hub

    images = square_images(tmp_path / "images")
    home = tmp_path / "home"
    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    cfg = quick_config(images, tmp_path / "run", push_to_hub="me/thing")
    with pytest.raises(UploadError, match=r"NetworkDown: .*then run `tokensmith push thing me/thing") as info:
        train(cfg, home=home, model=tiny_model("sd1"))
    # the retry stores nothing new, but must read this home's store (not the default one)
    assert str(info.value).endswith(f"`tokensmith push thing me/thing --home {home}`")
    assert Store.for_home(home).exists("thing")
    done = RunFolder(tmp_path / "run").read_progress()[-1]
    assert done["event"] == "done" and "not uploaded: upload to me/thing failed" in done["message"]

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    assert main(shlex.split(str(info.value).split("then run `")[1][:-1])[1:]) == EXIT_OK  # as advised
    assert capsys.readouterr().out.strip() == "https://huggingface.co/me/thing"
    assert RecordingApi.uploads == [("me/thing", ["README.md", "preview.png", "thing.safetensors"])]


def test_out_of_memory_fails_the_run_with_the_settings_that_need_less(tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB)")

    monkeypatch.setattr(steps_module, "step_loss", no_memory)
    cfg = quick_config(square_images(tmp_path / "images"), tmp_path / "run", batch_size=4)
    advice = (
        r"ran out of memory \(CUDA out of memory.*\); "
        r"try --batch-size 1 --grad-accum 4 \(the same batch\), --gradient-checkpointing, "
        r"--mixed-precision bf16"
    )
    with pytest.raises(TokensmithError, match=advice):
        train(cfg, home=tmp_path / "home", model=tiny_model("sd1"))
    failed = RunFolder(tmp_path / "run").read_progress()[-1]
    assert failed["event"] == "failed" and failed["message"].startswith("training ran out of memory")
    assert failed["reason"] == "out_of_memory" and failed["gradient_checkpointing"] is False
    assert failed["ran_out"].startswith("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not Store.for_home(tmp_path / "home").exists("thing")


def test_ctrl_c_stops_after_the_step_and_a_second_one_at_once(tmp_path, capsys):
    images = square_images(tmp_path / "images")
    cfg = quick_config(images, tmp_path / "run", early_stopping=False)

    def ctrl_c_at(step, times):
        def send(record):
            if record.get("step") == step and "event" not in record:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)

        return send

    handler_before = signal.getsignal(signal.SIGINT)
    train(cfg, home=tmp_path / "home", model=tiny_model("sd1"), on_progress=ctrl_c_at(2, 1))
    stopped = RunFolder(tmp_path / "run").read_progress()[-1]
    assert (stopped["event"], stopped["step"]) == ("stopped", 2)
    assert "Ctrl-C again quits now" in capsys.readouterr().err
    assert not Store.for_home(tmp_path / "home").exists("thing")
    with pytest.raises(KeyboardInterrupt):
        train(
            cfg.replace(resume=True),
            home=tmp_path / "home",
            model=tiny_model("sd1"),
            on_progress=ctrl_c_at(4, 2),
        )
    interrupted = RunFolder(tmp_path / "run").read_progress()[-1]
    assert interrupted["event"] == "stopped" and "--resume" in interrupted["message"]
    assert signal.getsignal(signal.SIGINT) == handler_before  # the trainer put pytest's handler back
    train(cfg.replace(resume=True), home=tmp_path / "home", model=tiny_model("sd1"))
    assert Store.for_home(tmp_path / "home").exists("thing")
