"""The two doors of a training run, `tokensmith train` and `python -m trainers` (the door `accelerate launch`
uses), end it in the same words (trainers/outcome.py): each situation is run through both, and both must
print the same lines, after their own program's name, and exit with the same status."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from tinyrun import square_images

from embeddings import Embedding, Store
from studio.cli import main as tokensmith
from trainers.__main__ import main as python_m_trainers

TRAIN, LAUNCH = "tokensmith train: ", "python -m trainers: "


class ConnectError(Exception):
    """Like httpx's ConnectError, which the hub client raises with no network."""


class OfflineApi:
    """A HfApi that cannot reach the hub."""

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        raise ConnectError("[Errno 111] Connection refused")


# --- running a door ---


def through_train(capsys, home: Path, images: Path, model: str, *flags: str) -> tuple[int, list[str]]:
    """`tokensmith train`'s exit status and its last words: stdout's lines, then its own lines on stderr
    (the program's name cut off)."""
    argv = ["train", "--images", str(images), "--name", "thing", "--model", model, "--home", str(home)]
    code = tokensmith([*argv, *SMALL, *flags])
    out, err = capsys.readouterr()
    said = [line.removeprefix(TRAIN) for line in err.splitlines() if line.startswith(TRAIN)]
    return code, out.splitlines() + said


def through_launch(capsys, tmp_path, home: Path, images: Path, model: str, **keys) -> tuple[int, list[str]]:
    """`python -m trainers --config FILE --home HOME`'s exit status and its last words: on stderr, from the
    result (or its first line of its own) on (the program's name cut off)."""
    values = {"images": str(images), "name": "thing", "model": model, **TOML, **keys}
    config = tmp_path / f"{home.name}.toml"
    config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    code = python_m_trainers(["--config", str(config), "--home", str(home)])
    lines = capsys.readouterr().err.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(("learned <", LAUNCH)))
    return code, [line.removeprefix(LAUNCH) for line in lines[first:]]


SMALL = ["--steps", "4", "--batch-size", "2", "--preview-images", "0", "--init", "a", "--save-every", "2"]
TOML = {"steps": 4, "batch_size": 2, "preview_images": 0, "init": "a", "save_every": 2}


def both(capsys, tmp_path, tiny_model_dir, *, flags=(), **keys) -> tuple[tuple, tuple]:
    """The same run through each door, each in its own home; the homes read HOME in what they say."""
    images = square_images(tmp_path / "images")
    train_home, launch_home = tmp_path / "home-train", tmp_path / "home-launch"
    code, said = through_train(capsys, train_home, images, tiny_model_dir, *flags)
    by_train = (code, [line.replace(str(train_home), "HOME") for line in said])
    code, said = through_launch(capsys, tmp_path, launch_home, images, tiny_model_dir, **keys)
    by_launch = (code, [line.replace(str(launch_home), "HOME") for line in said])
    return by_train, by_launch


@pytest.fixture
def stop_at_step_3(monkeypatch):
    """The run gets a SIGTERM at step 3 (what the studio's Cancel sends), whichever door started it."""
    import trainers.trainer

    real = trainers.trainer.train

    def stopping(cfg, *, home, on_progress=None, echo=None):
        def progress(record):
            if on_progress is not None:
                on_progress(record)
            if record.get("step") == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        return real(cfg, home=home, on_progress=progress, echo=echo)

    monkeypatch.setattr(trainers.trainer, "train", stopping)


# --- real runs on a tiny model ---


def test_a_finished_run_is_said_alike(capsys, tmp_path, tiny_model_dir):
    by_train, by_launch = both(capsys, tmp_path, tiny_model_dir)
    assert by_train == by_launch == (0, ["learned <thing> (finished); use it in a prompt as <thing>"])


def test_a_stopped_run_gives_the_full_resume_command_in_both(
    capsys, tmp_path, tiny_model_dir, stop_at_step_3
):
    """`python -m trainers` used to say only "continue with --resume"."""
    by_train, by_launch = both(capsys, tmp_path, tiny_model_dir)
    resume = "tokensmith train --run-dir HOME/runs/thing --home HOME --resume"
    assert by_train == by_launch == (1, [f"stopped at step 3; continue with: {resume}"])


def test_a_failed_upload_after_a_stored_run_says_the_result_then_the_error(
    capsys, tmp_path, tiny_model_dir, monkeypatch
):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    by_train, by_launch = both(
        capsys, tmp_path, tiny_model_dir, flags=("--push-to-hub", "me/thing"), push_to_hub="me/thing"
    )
    assert by_train == by_launch
    code, [learned, error] = by_train
    assert code == 1 and learned == "learned <thing> (finished); use it in a prompt as <thing>"
    assert error.startswith("error: upload to me/thing failed (ConnectError")
    assert Store.for_home(tmp_path / "home-launch").exists("thing")


# --- the other ends, with a stand-in trainer ---


def _ended(name: str, *, steps: int, trained: int, warning: str = "") -> Embedding:
    summary = {"end": "finished", "trained_steps": trained, "kept": "best", "config": {"run_dir": "run"}}
    meta = {"trainer": json.dumps(summary | ({"warning": warning} if warning else {})), "steps": str(steps)}
    return Embedding(name, {"emb_params": torch.zeros(1, 8)}, meta)


def _with_trainer(monkeypatch, fake):
    import trainers.trainer

    monkeypatch.setattr(trainers.trainer, "train", fake)


def test_the_kept_step_and_a_warning_are_said_alike(capsys, tmp_path, monkeypatch):
    warning = "only 0% of the stored step's previews have the training images' shape (triangle)"
    _with_trainer(monkeypatch, lambda cfg, **_: _ended(cfg.name, steps=75, trained=150, warning=warning))
    by_train, by_launch = both(capsys, tmp_path, "demo")
    how = "finished; kept step 75 of 150, whose previews scored best"
    learned = f"learned <thing> ({how}); use it in a prompt as <thing>"
    assert by_train == by_launch == (0, [learned, f"warning: {warning}"])


def test_a_run_stopped_while_it_prepared_is_said_alike(capsys, tmp_path, monkeypatch):
    from trainers.trainer import RunStopped

    def stopped(cfg, **_):
        raise RunStopped("stopped before the run began; run the same command again")

    _with_trainer(monkeypatch, stopped)
    by_train, by_launch = both(capsys, tmp_path, "demo")
    assert by_train == by_launch == (1, ["stopped before the run began; run the same command again"])


def test_an_upload_refused_before_any_result_is_an_error_in_both(capsys, tmp_path, monkeypatch):
    from trainers.hub import UploadError

    def refused(cfg, **_):
        raise UploadError("log in to the hub first: `hf auth login`")

    _with_trainer(monkeypatch, refused)
    by_train, by_launch = both(capsys, tmp_path, "demo")
    assert by_train == by_launch == (1, ["error: log in to the hub first: `hf auth login`"])


@pytest.mark.parametrize("rank", ["1", "0"])
def test_under_a_launch_the_main_process_alone_says_how_the_run_ended(capsys, tmp_path, monkeypatch, rank):
    _with_trainer(monkeypatch, lambda cfg, **_: _ended(cfg.name, steps=4, trained=4))
    monkeypatch.setenv("RANK", rank)
    images = square_images(tmp_path / "images")
    code, said = through_train(capsys, tmp_path / "a", images, "demo")
    assert code == 0 and bool(said) == (rank == "0")
    config = tmp_path / "run.toml"
    config.write_text('name = "thing"\n')
    assert python_m_trainers(["--config", str(config)]) == 0
    assert ("learned <thing>" in capsys.readouterr().err) == (rank == "0")
