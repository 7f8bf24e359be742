"""`tokensmith train` on the command line: flags, config files, errors, JSON, the equivalent command."""

import json
import shlex

import pytest
from PIL import Image

from embeddings import Store
from studio.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, build_parser, main
from studio.cli_train import config_from_args
from trainers.commands import equivalent_commands
from trainers.config import TrainConfig
from trainers.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    tiny_pipeline("sd1").save_pretrained(folder)
    return folder


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (200, 40 * i, 30)).save(folder / f"{i}.png")
    return folder


def test_train_and_demo_help_show_examples(capsys):
    for command in ("train", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "Example" in capsys.readouterr().out


def test_train_help_gives_each_default_once_and_no_empty_ones(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: 150)" in text and "(default: 'center')" in text
    assert "MISSING" not in text and "(default: '')" not in text and "(default: [])" not in text
    assert "(default: per family) (default:" not in text


def test_printed_command_parses_back_to_the_same_config(tmp_path):
    cfg = TrainConfig(
        images="my shots", name="cat", steps=77, flip=False, learning_rate=0.01, trackers=["wandb"]
    )
    single, _ = equivalent_commands(cfg, tmp_path / "config.toml")
    args = build_parser().parse_args(shlex.split(single)[1:])
    assert config_from_args(args) == cfg


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("images: shots\nname: cat\nsteps: 300\n")
    args = build_parser().parse_args(["train", "--config", str(path), "--steps", "20", "--style"])
    cfg = config_from_args(args)
    assert (cfg.steps, cfg.templates, cfg.name) == (20, "style", "cat")


def test_missing_images_or_bad_config_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["train", "--name", "cat"]) == EXIT_USAGE  # a required flag: a usage error, as argparse's
    assert "--images is required (or a --config file that sets it)" in capsys.readouterr().err
    assert main(["train"]) == EXIT_USAGE
    assert "--images and --name are required" in capsys.readouterr().err
    bad = tmp_path / "run.toml"
    bad.write_text("images = 'x'\nname = 'cat'\nsetps = 3\n")
    assert main(["train", "--config", str(bad)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown training config key(s) setps" in err
    assert main(["train", "--images", str(tmp_path / "none"), "--name", "cat"]) == EXIT_ERROR
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        (["--crop", "squash"], "argument --crop: invalid choice: 'squash'"),
        (["--vectors", "two"], "argument --vectors: vectors must be a whole number, got 'two'"),
        (["--learning-rate", "fast"], "argument --learning-rate: learning_rate must be a number, got 'fast'"),
    ],
)
def test_a_flag_value_of_the_wrong_kind_is_a_usage_error(flag, said, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--images", "x", "--name", "cat", *flag])
    assert info.value.code == EXIT_USAGE
    assert said in capsys.readouterr().err


def test_train_stores_the_embedding_and_prints_json(images, tiny_model, tmp_path, tokensmith_home, capsys):
    argv = ["train", "--images", str(images), "--name", "cli-cat", "--model", str(tiny_model), "--steps", "4",
            "--batch-size", "2", "--preview-images", "1", "--preview-steps", "2", "--validate-every", "2",
            "--init", "a", "--json"]  # fmt: skip
    assert main(argv) == EXIT_OK
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["name"] == "cli-cat" and result["steps"] == 4 and result["end"] == "finished"
    assert "accelerate launch -m trainers --config" in err and "equivalent command: tokensmith train" in err
    stored = Store.for_home(tokensmith_home).get("cli-cat")
    assert (result["path"], result["sha256"]) == (
        str(Store.for_home(tokensmith_home).path("cli-cat")),
        stored.sha256,
    )
    assert stored.meta["base_model"] == str(tiny_model) and stored.meta["init"] == "a"
    assert json.loads(stored.meta["trainer"])["config"]["steps"] == 4
    run = tokensmith_home / "runs" / "cli-cat"
    assert (run / "config.toml").is_file() and (run / "previews" / "step-000004.png").is_file()
    records = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    assert set(records[1]) >= {"step", "total", "loss", "val_loss", "metric", "lr", "elapsed", "eta"}
    assert records[-1]["event"] == "done" and records[-1]["name"] == "cli-cat"
    assert records[0]["text_attention"] == "eager"  # the CPU's faster text-encoder attention for training
    # the same name again is refused before any model loads; a second run goes to a new run folder
    assert main(argv) == EXIT_ERROR
    assert "already stored" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == EXIT_OK
    assert (tokensmith_home / "runs" / "cli-cat-2" / "progress.jsonl").is_file()


def test_python_m_trainers_runs_a_config_file_and_refuses_to_resume_a_finished_run(
    images, tiny_model, tmp_path, capsys
):
    from trainers.__main__ import main as trainers_main

    config = tmp_path / "run.toml"
    run = tmp_path / "run"
    config.write_text(
        f'images = "{images}"\nname = "from-file"\nmodel = "{tiny_model}"\nsteps = 2\nbatch_size = 2\n'
        f'preview_images = 0\ninit = "a"\nrun_dir = "{run}"\n'
    )
    home = tmp_path / "home"
    assert trainers_main(["--config", str(config), "--home", str(home)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("step 0/2 · val ") for line in lines)  # validated steps print a line
    assert any(line.startswith("step 2/2 · loss ") and "ETA 0 s" in line for line in lines)
    assert Store.for_home(home).exists("from-file")
    assert (run / "config.toml").is_file()
    assert trainers_main(["--config", str(run / "config.toml"), "--home", str(home), "--resume"]) == 1


def test_the_progress_bar_keeps_the_latest_scores_on_show(capsys):
    from studio.cli_train import ProgressBar

    bar = ProgressBar(150)
    bar({"step": 0, "loss": None, "val_loss": 0.3, "metric": 120.0, "shape_match": 0.0})
    bar({"step": 25, "loss": 0.2, "val_loss": 0.15, "metric": 29.4123, "shape_match": 0.75})
    assert bar.bar.n == 25
    assert bar.bar.postfix == "loss=0.2000, val=0.1500, metric=29.41, shape=75%"
    bar({"step": 26, "loss": 0.19})  # a step without validation or previews
    assert bar.bar.postfix == "loss=0.1900, val=0.1500, metric=29.41, shape=75%"
    bar({"step": 27, "loss": 0.18, "metric": 0.81234, "clip_text": 0.2876})
    assert bar.bar.postfix == "loss=0.1800, val=0.1500, metric=0.8123, shape=75%, clip_text=0.288"
    bar.close()


def test_the_progress_bar_starts_its_clock_at_the_first_record(capsys):
    """Loading the model and caching latents are not steps: the bar (and its rate and ETA) starts with the
    run's first record; a resume's bar starts where the checkpoint was."""
    from studio.cli_train import ProgressBar

    bar = ProgressBar(150)
    bar.write("run folder: /tmp/run")  # before the first record, lines still reach the terminal
    assert bar.bar is None
    bar({"step": 101, "loss": 0.2})  # resumed from step 100's checkpoint
    assert (bar.bar.initial, bar.bar.n, bar.bar.total) == (100, 101, 150)
    # the rate is the average since the first record: a step slowed by previews does not swing the ETA
    assert bar.bar.smoothing == 0
    bar.close()
    assert "run folder: /tmp/run" in capsys.readouterr().err


def test_under_a_multi_process_launch_only_the_main_process_shows_the_bar_and_result(monkeypatch, capsys):
    import torch

    import studio.cli_train
    import trainers.trainer
    from embeddings import Embedding

    def fake_train(cfg, *, home, on_progress, echo):
        on_progress({"step": 1, "loss": 0.5})
        trainer = {"end": "finished", "trained_steps": 1, "config": {"run_dir": "run"}}
        return Embedding(cfg.name, {"emb_params": torch.zeros(1, 8)}, {"trainer": json.dumps(trainer)})

    monkeypatch.setattr(trainers.trainer, "train", fake_train)
    monkeypatch.setattr("studio.cli.LOG_BAR_SECONDS", 0)  # into a pipe: the bar drawn at once, not after 30 s
    args = build_parser().parse_args(["train", "--images", "x", "--name", "cat"])
    monkeypatch.setenv("RANK", "1")
    assert studio.cli_train.run_train(args) == EXIT_OK
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("RANK", "0")
    assert studio.cli_train.run_train(args) == EXIT_OK
    out, err = capsys.readouterr()
    assert "learned <cat>" in out and "training" in err


def test_a_warning_from_the_stored_steps_previews_is_printed_and_in_the_json(monkeypatch, capsys):
    import torch

    import studio.cli_train
    import trainers.trainer
    from embeddings import Embedding

    warning = "only 0% of the stored step's previews have the training images' shape (triangle); ..."

    def fake_train(cfg, *, home, on_progress, echo):
        trainer = {"end": "finished", "trained_steps": 150, "config": {"run_dir": "run"}, "warning": warning}
        return Embedding(cfg.name, {"emb_params": torch.zeros(1, 8)}, {"trainer": json.dumps(trainer)})

    monkeypatch.setattr(trainers.trainer, "train", fake_train)
    args = build_parser().parse_args(["train", "--images", "x", "--name", "cat"])
    assert studio.cli_train.run_train(args) == EXIT_OK
    out, err = capsys.readouterr()
    assert "learned <cat>" in out and f"tokensmith train: warning: {warning}" in err
    args = build_parser().parse_args(["train", "--images", "x", "--name", "cat", "--json"])
    assert studio.cli_train.run_train(args) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["warning"] == warning


def test_a_run_begun_with_relative_paths_continues_from_another_folder_by_its_printed_launch(
    images, tiny_model, tmp_path, monkeypatch
):
    """config.toml and command.txt hold absolute paths and the run's home, so the printed launch line (with
    --resume, as its note says) continues the run from any folder instead of starting a new one at step 0."""
    import os
    import shutil
    import signal
    from pathlib import Path

    from trainers.__main__ import main as trainers_main
    from trainers.configfile import load
    from trainers.storing import summary
    from trainers.trainer import train

    work = tmp_path / "work"
    shutil.copytree(images, work / "shots")
    shutil.copytree(tiny_model, work / "model")
    (work / "prompts.txt").write_text("a photo of [name]\n")
    monkeypatch.chdir(work)

    def stop_at_3(record):  # what the studio's Cancel does
        if record.get("step") == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    paths = dict(images="shots", model="model", templates="prompts.txt", run_dir="runs/rel")
    quick = dict(steps=6, batch_size=2, save_every=2, validate_every=2, preview_images=0, init="a")
    cfg = TrainConfig(name="rel", **paths, **quick)
    assert summary(train(cfg, home=Path("home"), on_progress=stop_at_3))["end"] == "stopped"
    run, home = work / "runs" / "rel", work / "home"
    written = load(run / "config.toml")
    assert (written.images, written.model, written.templates, written.run_dir) == (
        str(work / "shots"),
        str(work / "model"),
        str(work / "prompts.txt"),
        str(run),
    )
    single, launch, *notes = (run / "command.txt").read_text().splitlines()
    assert launch == f"accelerate launch -m trainers --config {run / 'config.toml'} --home {home}"
    assert notes == [
        "# once this run has begun, add --resume to either command to continue it, or --run-dir NEW_DIR "
        "(and --overwrite once it is stored) to run it again"
    ]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = build_parser().parse_args(shlex.split(single)[1:])
    assert args.home == str(home) and config_from_args(args) == written
    assert trainers_main([*shlex.split(launch)[4:], "--resume"]) == 0  # what follows `-m trainers`
    records = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "event" not in r] == list(range(7)), "continued from step 3"
    assert records[-1]["event"] == "done" and Store.for_home(home).exists("rel")
    assert not (elsewhere / "runs").exists()
    # the same line with --run-dir NEW (and --overwrite, now that it is stored) runs it again
    again = tmp_path / "again"
    assert trainers_main([*shlex.split(launch)[4:], "--run-dir", str(again), "--overwrite"]) == 0
    assert json.loads((again / "progress.jsonl").read_text().splitlines()[-1])["event"] == "done"
