"""A run killed with SIGKILL (in a subprocess) and resumed ends within 1e-6 of an uninterrupted run; the store
never sees a partial file; SIGTERM stops cleanly with a `stopped` event, a snapshot and a checkpoint."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from embeddings import Store
from studio.cli import EXIT_ERROR, main
from trainers.tiny import tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    tiny_pipeline("sd1").save_pretrained(base / "model")
    images = base / "images"
    images.mkdir()
    for i in range(4):
        image = Image.new("RGB", (16, 16), (30, 30, 30))
        image.paste((230, 60 * i, 40), (3, 3, 13, 13))
        image.save(images / f"{i}.png")
    return base


def _args(setup, run_dir, steps=40):
    return [
        "train",
        "--images",
        str(setup / "images"),
        "--name",
        "kitty",
        "--model",
        str(setup / "model"),
        "--steps",
        str(steps),
        "--save-every",
        "4",
        "--validate-every",
        "4",
        "--batch-size",
        "2",
        "--preview-images",
        "0",
        "--seed",
        "3",
        "--init",
        "a",
        "--run-dir",
        str(run_dir),
    ]


def _spawn(args, home):
    env = {**os.environ, "TOKENSMITH_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "studio", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"trainer exited early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]


def test_killed_stopped_and_resumed_run_matches_an_uninterrupted_one(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # in-process runs keep one thread, like the subprocesses
    assert main([*_args(setup, tmp_path / "whole"), "--home", str(tmp_path / "home-a")]) == 0
    whole = Store.for_home(tmp_path / "home-a").get("kitty")

    # 1. SIGKILL after the step-8 checkpoint: nothing finished, nothing in the store.
    home, run = tmp_path / "home-b", tmp_path / "interrupted"
    proc = _spawn(_args(setup, run), home)
    _wait_for(run / "checkpoints" / "step-000008", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not [r for r in _records(run) if "event" in r], "the killed run should not have finished"
    store_dir = home / "embeddings"
    assert not store_dir.exists() or not any(store_dir.iterdir()), "the store holds a partial result"

    # 2. Resume, then SIGTERM (the studio's Cancel) after step 13: a stopped event and a last snapshot.
    def cancel_at_13(record):
        if record.get("step") == 13:
            os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("studio.cli_train.ProgressBar.__call__", lambda bar, record: cancel_at_13(record))
        assert main(["train", "--run-dir", str(run), "--resume", "--home", str(home)]) == EXIT_ERROR
    assert "--resume" in capsys.readouterr().err
    last = _records(run)[-1]
    assert (last["event"], last["name"], last["step"]) == ("stopped", "kitty", 13)
    assert (run / "snapshots" / "step-000013.safetensors").is_file()
    # Accelerate's save_state files (read back with weights_only=True) beside our safetensors + JSON
    assert {p.name for p in (run / "checkpoints" / "step-000013").iterdir()} == {
        "optimizer.bin",
        "random_states_0.pkl",
        "state.json",
        "state.safetensors",
    }
    assert not Store.for_home(home).exists("kitty")
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the trainer put the previous handler back

    # 3. Resume again (in this process) to the end: the same embedding as the uninterrupted run.
    assert main(["train", "--run-dir", str(run), "--resume", "--home", str(home)]) == 0
    result = Store.for_home(home).get("kitty")
    difference = (result.vectors["emb_params"] - whole.vectors["emb_params"]).abs().max()
    assert float(difference) <= 1e-6
    records = _records(run)
    steps = [r["step"] for r in records if "event" not in r]
    assert steps == sorted(set(steps)) and steps[-1] == 40, "resume left a gap or duplicate in progress.jsonl"
    assert [r["event"] for r in records if "event" in r] == ["done"]


def test_a_finished_run_trains_further_like_one_longer_run(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    longer = [*_args(setup, tmp_path / "longer", steps=32), "--home", str(tmp_path / "home-a")]
    assert main(longer) == 0
    whole = Store.for_home(tmp_path / "home-a").get("kitty")

    home, run = str(tmp_path / "home-b"), tmp_path / "further"
    assert main([*_args(setup, run, steps=20), "--home", home]) == 0
    assert (run / "checkpoints" / "step-000020").is_dir(), "the last step is checkpointed too"
    # the same config again: nothing to do, and the error says how to train further
    assert main(["train", "--run-dir", str(run), "--resume", "--home", home]) == EXIT_ERROR
    assert "--steps above 20" in capsys.readouterr().err
    # more steps, but the embedding is stored: --overwrite is asked for, nothing changes
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "32", "--home", home]) == EXIT_ERROR
    assert "--overwrite" in capsys.readouterr().err
    assert Store.for_home(home).get("kitty").meta["steps"] == "20"

    assert (
        main(["train", "--run-dir", str(run), "--resume", "--steps", "32", "--overwrite", "--home", home])
        == 0
    )
    further = Store.for_home(home).get("kitty")
    assert further.meta["steps"] == "32"
    difference = (further.vectors["emb_params"] - whole.vectors["emb_params"]).abs().max()
    assert float(difference) <= 1e-6
    records = _records(run)
    steps = [r["step"] for r in records if "event" not in r]
    assert steps == list(range(33)), "the log should read as one 32-step run"
    assert [r["event"] for r in records if "event" in r] == ["done"]


def test_a_run_without_checkpoints_resumes_from_the_start_with_one_clean_log(setup, tmp_path):
    home, run = str(tmp_path / "home"), tmp_path / "run"
    assert main([*_args(setup, run, steps=6), "--save-every", "0", "--home", home]) == 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000006"]  # 0: only at the end
    shutil.rmtree(run / "checkpoints")  # as if killed before its first checkpoint
    further = ["train", "--run-dir", str(run), "--resume", "--steps", "8", "--overwrite", "--home", home]
    assert main(further) == 0
    records = _records(run)
    assert [r["step"] for r in records if "event" not in r] == list(range(9))
    assert Store.for_home(home).get("kitty").meta["steps"] == "8"


def test_a_resume_that_would_compute_something_else_names_what_changed(setup, tmp_path, capsys):
    home, run = str(tmp_path / "home"), tmp_path / "run"
    assert main([*_args(setup, run, steps=8), "--lr-schedule", "cosine", "--home", home]) == 0
    own_config = (run / "config.toml").read_text()
    further = ["train", "--run-dir", str(run), "--resume", "--overwrite", "--home", home]
    assert main([*further, "--steps", "12", "--learning-rate", "0.5"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "learning_rate: 0.02 -> 0.5" in err and "steps: 8 -> 12" in err  # cosine's rates depend on steps
    assert "--config" in err and str(run / "config.toml") in err
    assert (run / "config.toml").read_text() == own_config, "a refused resume rewrote the run's config"
    assert Store.for_home(home).get("kitty").meta["steps"] == "8"


def test_options_added_or_removed_since_a_checkpoint_do_not_block_its_resume():
    from trainers.config import TrainConfig
    from trainers.resume import computed_values, config_changes

    cfg = TrainConfig(name="kitty", learning_rate=0.01)
    saved = computed_values(cfg)
    assert config_changes(saved, cfg.replace(steps=300, early_stopping=False, overwrite=True)) == []
    older = {k: v for k, v in saved.items() if k != "min_snr_gamma"}  # an option added since, at its default
    assert config_changes({**older, "retired_option": 1}, cfg) == []
    assert config_changes(older, cfg.replace(min_snr_gamma=5.0)) == ["min_snr_gamma: 0.0 -> 5.0"]


def test_a_run_that_stopped_early_continues_with_early_stopping_off(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    eager = ["--min-steps", "0", "--dvar-window", "2", "--dvar-threshold", "1e9"]  # stops at its 4th check
    home, run = str(tmp_path / "home"), tmp_path / "run"
    assert main([*_args(setup, run, steps=24), *eager, "--home", home]) == 0
    done = _records(run)[-1]
    assert (done["reason"], done["steps"]) == ("early_stopped", 16)
    assert main(["train", "--run-dir", str(run), "--resume", "--overwrite", "--home", home]) == EXIT_ERROR
    assert "--no-early-stopping (it stopped early)" in capsys.readouterr().err
    # more steps under the same early-stopping rule would stop again before a new step: refused, with the hint
    longer = ["train", "--run-dir", str(run), "--resume", "--overwrite", "--steps", "30", "--home", home]
    assert main(longer) == EXIT_ERROR
    assert "--no-early-stopping (it stopped early)" in capsys.readouterr().err
    further = [
        "train",
        "--run-dir",
        str(run),
        "--resume",
        "--overwrite",
        "--no-early-stopping",
        "--home",
        home,
    ]
    assert main(further) == 0
    continued = Store.for_home(home).get("kitty")
    assert continued.meta["steps"] == "24"

    whole_home = str(tmp_path / "whole")
    assert (
        main([*_args(setup, tmp_path / "whole-run", steps=24), "--no-early-stopping", "--home", whole_home])
        == 0
    )
    whole = Store.for_home(whole_home).get("kitty")
    difference = (continued.vectors["emb_params"] - whole.vectors["emb_params"]).abs().max()
    assert float(difference) <= 1e-6


def test_a_resume_whose_latent_cache_an_older_version_wrote_is_refused(setup, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from trainers.latents import _metadata

    home, run = str(tmp_path / "home"), tmp_path / "run"
    assert main([*_args(setup, run, steps=4), "--home", home]) == 0
    cache = run / "latents.safetensors"
    meta = _metadata(cache)
    save_file(load_file(str(cache)), str(cache), metadata={**meta, "format": "tokensmith-latents/1"})
    before = cache.read_bytes()
    further = ["train", "--run-dir", str(run), "--resume", "--steps", "6", "--overwrite", "--home", home]
    assert main(further) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "is tokensmith-latents/1, written by an older tokensmith" in err and "--run-dir NEW_DIR" in err
    assert cache.read_bytes() == before  # refused before anything was encoded again
