"""A stop before the first step. While the model loads, latents are cached or step 0 is scored, a Ctrl-C
stops the run at once (RunStopped, a `stopped` event) and a SIGTERM (the studio's Cancel) ends the process at
once after writing that event; `--resume` starts the run over, or continues from its checkpoint. A run killed
outright while it prepared (config written, no progress yet) is found by `--resume` too, and a model that
fails to load leaves a `failed` event."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tinyrun import quick_config, square_images, tiny_model

from embeddings import Store
from studio.cli import main
from trainers import train
from trainers import trainer as trainer_module
from trainers.runfolder import RunFolder
from trainers.trainer import RunStopped


def _last(folder) -> dict:
    return RunFolder(folder).read_progress()[-1]


def test_a_ctrl_c_while_the_model_loads_ends_the_run_and_resume_starts_it_over(tmp_path, monkeypatch):
    images = square_images(tmp_path / "images")
    whole = train(quick_config(images, tmp_path / "whole"), home=tmp_path / "a", model=tiny_model("sd1"))

    def load_and_be_interrupted(cfg):
        os.kill(os.getpid(), signal.SIGINT)  # the handler raises as soon as the signal is taken
        raise AssertionError("loading went on after the stop")

    handler_before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(trainer_module, "_load", load_and_be_interrupted)
    with pytest.raises(RunStopped, match="before any step was taken; run it again with --resume"):
        train(quick_config(images, tmp_path / "run"), home=tmp_path / "b")
    stopped = _last(tmp_path / "run")
    assert stopped["event"] == "stopped" and "run it again with --resume" in stopped["message"]
    assert signal.getsignal(signal.SIGINT) == handler_before
    assert not (tmp_path / "run" / "pid").exists()  # the claim was released

    monkeypatch.setattr(trainer_module, "_load", lambda cfg: tiny_model("sd1"))
    resumed = train(quick_config(images, tmp_path / "run", resume=True), home=tmp_path / "b")
    assert torch.equal(whole.vectors["emb_params"], resumed.vectors["emb_params"])
    assert [r.get("event") for r in RunFolder(tmp_path / "run").read_progress()] == [None] * 7 + ["done"]


def test_a_sigterm_while_the_model_loads_ends_the_process_at_once_with_its_event(tmp_path):
    """As SIGTERM's default action, without waiting for what the main thread was doing (a hub download's
    worker threads); the `stopped` event is written first."""
    images = square_images(tmp_path / "images")
    script = textwrap.dedent(
        f"""
        import os, signal, sys, threading, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from tinyrun import quick_config
        from trainers import trainer

        def load(cfg):
            threading.Thread(target=time.sleep, args=(60,)).start()  # like a download's worker thread
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)

        trainer._load = load
        trainer.train(quick_config({str(images)!r}, {str(tmp_path / "run")!r}), home={str(tmp_path / "h")!r})
        """
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert time.monotonic() - started < 50  # neither sleep was waited for
    stopped = _last(tmp_path / "run")
    assert stopped["event"] == "stopped" and "run it again with --resume" in stopped["message"]


def test_a_ctrl_c_while_step_0_is_scored_stops_before_the_first_step(tmp_path):
    images = square_images(tmp_path / "images")

    def interrupt_at_step_0(record):
        if record.get("step") == 0 and "event" not in record:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(RunStopped):
        train(
            quick_config(images, tmp_path / "run"),
            home=tmp_path / "home",
            model=tiny_model("sd1"),
            on_progress=interrupt_at_step_0,
        )
    assert _last(tmp_path / "run")["event"] == "stopped"
    assert RunFolder(tmp_path / "run").latest_checkpoint() is None
    assert not Store.for_home(tmp_path / "home").exists("thing")


def test_a_stop_while_a_resume_prepares_says_where_it_will_continue(tmp_path, monkeypatch, capsys):
    images = square_images(tmp_path / "images")
    cfg = quick_config(images, tmp_path / "run", early_stopping=False)

    def interrupt_after(step):
        def send(record):
            if record.get("step") == step and "event" not in record:
                os.kill(os.getpid(), signal.SIGINT)

        return send

    train(cfg, home=tmp_path / "home", model=tiny_model("sd1"), on_progress=interrupt_after(3))
    assert (_last(tmp_path / "run")["event"], RunFolder(tmp_path / "run").checkpoint_step()) == ("stopped", 3)
    attach = trainer_module.attach_rows

    def attach_and_be_interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return attach(*args, **kwargs)

    said = []
    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "attach_rows", attach_and_be_interrupted)
        with pytest.raises(RunStopped, match=r"preparing to resume, nothing more trained; .* from step 3"):
            train(cfg.replace(resume=True), home=tmp_path / "home", model=tiny_model("sd1"), echo=said.append)
    assert "init: the checkpoint's rows at step 3 (the run began from 'a')" in said
    assert "from step 3" in _last(tmp_path / "run")["message"]
    train(cfg.replace(resume=True), home=tmp_path / "home", model=tiny_model("sd1"))
    assert _last(tmp_path / "run")["event"] == "done"


def test_a_ctrl_c_while_a_run_that_stopped_early_is_stored_on_resume_lets_it_be_stored(tmp_path, monkeypatch):
    """Killed after it stopped early and before its store write: the resume ends there and stores it, a
    first Ctrl-C then waiting as it does at the end of any run."""
    images = square_images(tmp_path / "images")
    changes = dict(validate_every=1, save_every=1, dvar_window=1, dvar_threshold=100.0, min_steps=0)
    cfg = quick_config(images, tmp_path / "run", **changes)
    put = Store.put
    with monkeypatch.context() as patch:
        patch.setattr(Store, "put", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("killed")))
        with pytest.raises(OSError):
            train(cfg, home=tmp_path / "home", model=tiny_model("sd1"))

    def interrupted_put(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return put(*args, **kwargs)

    monkeypatch.setattr(Store, "put", interrupted_put)
    emb = train(cfg.replace(resume=True), home=tmp_path / "home", model=tiny_model("sd1"))
    assert json.loads(emb.meta["trainer"])["end"] == "early_stopped"
    assert _last(tmp_path / "run")["event"] == "done"


def test_a_failed_model_load_is_recorded_in_the_run_folder(tmp_path, capsys):
    images = square_images(tmp_path / "images")
    # a folder that only loading finds is no diffusers model (a missing path is refused before the run folder)
    missing, home = tmp_path / "not-a-model", tmp_path / "home"
    missing.mkdir()
    argv = ["train", "--images", str(images), "--name", "thing", "--model", str(missing), "--home", str(home)]
    code = main(argv)
    assert code == 1
    said = capsys.readouterr().err.strip().splitlines()[-1]
    failed = _last(tmp_path / "home" / "runs" / "thing")
    assert failed["event"] == "failed"
    assert failed["message"] in said and not failed["message"].startswith("TokensmithError")


def test_resume_finds_a_run_killed_before_it_logged_anything(tmp_path, monkeypatch):
    """SIGKILL while the model loads: the folder has its config and no progress.jsonl."""
    images = square_images(tmp_path / "images")
    home = tmp_path / "home"

    def killed(cfg):
        raise SystemExit(137)

    monkeypatch.setattr(trainer_module, "_load", killed)
    with pytest.raises(SystemExit):
        train(quick_config(images, "", name="thing"), home=home)
    run = home / "runs" / "thing"
    (run / "progress.jsonl").unlink()  # what a SIGKILL leaves: no closing event
    monkeypatch.setattr(trainer_module, "_load", lambda cfg: tiny_model("sd1"))
    train(quick_config(images, "", name="thing", resume=True), home=home)
    assert _last(run)["event"] == "done"
    assert not (home / "runs" / "thing-2").exists()


def test_the_demo_stopped_before_it_trained_says_to_run_it_again(tmp_path, monkeypatch, capsys):
    def stopped(*args, **kwargs):
        raise RunStopped("stopped while preparing, before any step was taken; run it again with --resume")

    monkeypatch.setattr(trainer_module, "train", stopped)
    assert main(["demo", "--home", str(tmp_path / "home"), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "tokensmith demo: stopped before it finished training; run `tokensmith demo` again" in err
    assert "--resume" not in err


def test_a_ctrl_c_before_the_run_folder_is_written_says_to_run_the_command_again(tmp_path, monkeypatch):
    def claimed_and_interrupted(cfg, home, folder):
        os.kill(os.getpid(), signal.SIGINT)
        return folder

    monkeypatch.setattr(trainer_module, "claim_run_folder", claimed_and_interrupted)
    images = square_images(tmp_path / "images")
    with pytest.raises(RunStopped, match="stopped before the run began; run the same command again"):
        train(quick_config(images, tmp_path / "run"), home=tmp_path / "home", model=tiny_model("sd1"))
    assert not (tmp_path / "run" / "progress.jsonl").exists()


def test_a_stop_during_the_cleanup_after_a_failure_leaves_the_failure(tmp_path, monkeypatch):
    """The `failed` event is the run's last word: a Ctrl-C while the model is being restored afterwards
    neither adds a `stopped` event nor cuts the restore short, and the failure is what the caller gets."""
    images = square_images(tmp_path / "images")
    restore = trainer_module.restore_model
    restored = []

    def fail(*args, **kwargs):
        raise RuntimeError("broken rows")

    def interrupted_restore(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        restore(*args, **kwargs)
        restored.append(True)

    monkeypatch.setattr(trainer_module, "attach_rows", fail)
    monkeypatch.setattr(trainer_module, "restore_model", interrupted_restore)
    with pytest.raises(RuntimeError, match="broken rows"):
        train(quick_config(images, tmp_path / "run"), home=tmp_path / "home", model=tiny_model("sd1"))
    assert restored == [True]
    failed = _last(tmp_path / "run")
    assert failed["event"] == "failed" and failed["message"] == "RuntimeError: broken rows"
