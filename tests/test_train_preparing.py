"""A stop before the first step: a SIGTERM (the studio's Cancel) or Ctrl-C while the model loads or step 0 is
scored ends the run at once with a `stopped` event, and `--resume` starts it over; a run killed outright
while it prepared (config written, no progress yet) is found by `--resume` too."""

import os
import signal

import pytest
import torch
from tinyrun import quick_config, square_images, tiny_model

from embeddings import Store
from studio.cli import main
from trainers import train
from trainers import trainer as trainer_module
from trainers.runfolder import RunFolder
from trainers.trainer import RunStopped


def _stopped_event(folder) -> dict:
    last = RunFolder(folder).read_progress()[-1]
    assert last["event"] == "stopped" and "--resume" in last["message"]
    return last


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_the_model_loads_ends_the_run_and_resume_starts_it_over(tmp_path, monkeypatch, signum):
    images = square_images(tmp_path / "images")
    whole = train(quick_config(images, tmp_path / "whole"), home=tmp_path / "a", model=tiny_model("sd1"))

    def load_and_be_cancelled(cfg):
        os.kill(os.getpid(), signum)  # the handler raises as soon as the signal is taken
        raise AssertionError("loading went on after the stop")

    handler_before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(trainer_module, "_load", load_and_be_cancelled)
    with pytest.raises(RunStopped, match="before any step was taken; run it again with --resume"):
        train(quick_config(images, tmp_path / "run"), home=tmp_path / "b")
    _stopped_event(tmp_path / "run")
    assert signal.getsignal(signal.SIGTERM) == handler_before
    assert not (tmp_path / "run" / "pid").exists()  # the claim was released

    monkeypatch.setattr(trainer_module, "_load", lambda cfg: tiny_model("sd1"))
    resumed = train(quick_config(images, tmp_path / "run", resume=True), home=tmp_path / "b")
    assert torch.equal(whole.vectors["emb_params"], resumed.vectors["emb_params"])
    assert [r.get("event") for r in RunFolder(tmp_path / "run").read_progress()].count("stopped") == 0


def test_a_cancel_while_step_0_is_scored_stops_before_the_first_step(tmp_path):
    images = square_images(tmp_path / "images")

    def cancel_at_step_0(record):
        if record.get("step") == 0 and "event" not in record:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RunStopped):
        train(
            quick_config(images, tmp_path / "run"),
            home=tmp_path / "home",
            model=tiny_model("sd1"),
            on_progress=cancel_at_step_0,
        )
    _stopped_event(tmp_path / "run")
    assert RunFolder(tmp_path / "run").latest_checkpoint() is None
    assert not Store.for_home(tmp_path / "home").exists("thing")


def test_a_failed_model_load_is_recorded_in_the_run_folder(tmp_path, capsys):
    images = square_images(tmp_path / "images")
    missing, home = tmp_path / "no-such-model", tmp_path / "home"
    argv = ["train", "--images", str(images), "--name", "thing", "--model", str(missing), "--home", str(home)]
    code = main(argv)
    assert code == 1
    said = capsys.readouterr().err.strip().splitlines()[-1]
    failed = RunFolder(tmp_path / "home" / "runs" / "thing").read_progress()[-1]
    assert failed["event"] == "failed"
    assert failed["message"] in said and not failed["message"].startswith("TokensmithError")


def test_resume_finds_a_run_killed_before_it_logged_anything(tmp_path, monkeypatch, capsys):
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
    assert RunFolder(run).read_progress()[-1]["event"] == "done"
    assert not (home / "runs" / "thing-2").exists()
