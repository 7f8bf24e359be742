"""Config, options and resume, as reviewed: a refused resume changes nothing in the run folder, a resume
leaves per-family defaults to the run's own values, and mistakes that need no model are refused before a run
folder is made."""

import json
import os
import signal
from pathlib import Path

import pytest
from PIL import Image
from tinyrun import quick_config, square_images, tiny_model

from embeddings import Embedding, Store
from embeddings.errors import TokensmithError
from studio.cli import EXIT_ERROR, EXIT_USAGE, main
from trainers import TrainConfig, train
from trainers.card import model_card
from trainers.config import ConfigError
from trainers.configfile import from_mapping, load
from trainers.runfolder import RunFolder


def _stop_at(step: int):
    """An on_progress that asks for a stop (the studio's SIGTERM) once `step` is logged."""

    def on_progress(record):
        if record.get("step") == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return on_progress


def _files(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in ("config.toml", "command.txt", "progress.jsonl")}


def _stopped_run(tmp_path, **changes):
    """A 10-step run of 3 vectors stopped after step 5, its checkpoint: (config, home, run folder). Short
    templates: the tiny tokenizer reads 16 tokens."""
    images = square_images(tmp_path / "images")
    run, home = tmp_path / "run", tmp_path / "home"
    (tmp_path / "short.txt").write_text("a [name]\na photo of a [name]\n")
    values = {"steps": 10, "save_every": 5, "vectors": 3, "templates": str(tmp_path / "short.txt"), **changes}
    cfg = quick_config(images, run, **values)
    stopped = train(cfg, home=home, model=tiny_model("sd1"), on_progress=_stop_at(5))
    assert json.loads(stopped.meta["trainer"])["end"] == "stopped"
    assert RunFolder(run).checkpoint_step() == 5
    return cfg, home, run


# --- 1. resume: the run's own values; a refusal changes nothing ---


def test_a_resume_that_leaves_vectors_to_the_family_continues_with_the_runs_own(tmp_path):
    cfg, home, run = _stopped_run(tmp_path)
    whole = train(
        cfg.replace(run_dir=str(tmp_path / "whole")), home=tmp_path / "home-whole", model=tiny_model("sd1")
    )
    # vectors 0 (a config file without the key) and -1s ask for the family's default: a resume, the run's own
    resumed = cfg.replace(vectors=0, preview_images=-1, refine_latents=-1, init="", resume=True)
    emb = train(resumed, home=home, model=tiny_model("sd1"))
    assert emb.num_vectors == 3
    assert float((emb.vectors["emb_params"] - whole.vectors["emb_params"]).abs().max()) == 0.0
    assert "vectors = 3" in (run / "config.toml").read_text()


def test_a_refused_resume_leaves_the_run_folder_as_it_was(tmp_path):
    cfg, home, run = _stopped_run(tmp_path)
    before = _files(run)
    with pytest.raises(TokensmithError, match="vectors: 3 -> 2"):
        train(cfg.replace(vectors=2, resume=True), home=home, model=tiny_model("sd1"))
    assert _files(run) == before
    # refused once the model has loaded (here: another number of processes) it is left as it was too
    state = next((run / "checkpoints").iterdir()) / "state.json"
    meta = json.loads(state.read_text())
    meta["stopper"]["processes"] = 2
    state.write_text(json.dumps(meta))
    with pytest.raises(TokensmithError, match="made by 2 process"):
        train(cfg.replace(resume=True), home=home, model=tiny_model("sd1"))
    assert _files(run) == before, "a refused resume rewrote the run's files or logged a failure"
    assert RunFolder(run).read_progress()[-1]["event"] == "stopped"


def test_the_resume_the_cli_advises_is_accepted(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A config file without `vectors`, started with --vectors 3, resumes with the same file."""
    images = square_images(tmp_path / "images")
    home, run = tmp_path / "home", tmp_path / "run"
    config, short = tmp_path / "run.toml", tmp_path / "short.txt"
    short.write_text("a [name]\n")
    config.write_text(
        f'images = "{images}"\nname = "thing"\nmodel = "{tiny_model_dir}"\nrun_dir = "{run}"\nsteps = 10\n'
        'save_every = 5\nbatch_size = 2\npreview_images = 0\nrefine_latents = 0\ninit = "a"\n'
        f'templates = "{short}"\n'
    )
    with monkeypatch.context() as patch:
        patch.setattr("studio.cli_train.ProgressBar.__call__", lambda bar, record: _stop_at(5)(record))
        argv = ["train", "--config", str(config), "--vectors", "3", "--home", str(home)]
        assert main(argv) == EXIT_ERROR
    assert RunFolder(run).checkpoint_step() == 5
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--resume", "--home", str(home)]) == 0
    assert Store.for_home(home).get("thing").num_vectors == 3


def test_a_refusal_names_the_family_default_an_empty_init_stands_for(tmp_path):
    cfg, home, _ = _stopped_run(tmp_path, init="")
    with pytest.raises(TokensmithError, match=r"init: '' \(the family's default 'object'\) -> 'blue'"):
        train(cfg.replace(init="blue", resume=True), home=home, model=tiny_model("sd1"))


def test_a_resume_notices_an_edited_template_file(tmp_path):
    templates = tmp_path / "prompts.txt"
    templates.write_text("a [name]\na photo of a [name]\n")
    cfg, home, run = _stopped_run(tmp_path, templates=str(templates))
    before = _files(run)
    templates.write_text("a large [name] on a white background\n")
    with pytest.raises(TokensmithError, match=r"template file .*prompts.txt changed since the run began"):
        train(cfg.replace(resume=True), home=home, model=tiny_model("sd1"))
    assert _files(run) == before
    templates.write_text("a [name]\na photo of a [name]\n")  # restored: the resume goes ahead
    assert train(cfg.replace(resume=True), home=home, model=tiny_model("sd1")).meta["steps"] == "10"


def test_the_stored_file_records_the_runs_config_not_the_last_commands_flags(tmp_path):
    cfg, home, _ = _stopped_run(tmp_path)
    emb = train(cfg.replace(resume=True, overwrite=True), home=home, model=tiny_model("sd1"))
    stored = json.loads(emb.meta["trainer"])["config"]
    assert (stored["resume"], stored["overwrite"]) == (False, False)


def test_a_restart_says_it_starts_over(tmp_path):
    from trainers.trainer import preparing_what

    run = RunFolder(tmp_path / "run")
    (run.checkpoints).mkdir(parents=True)
    cfg = TrainConfig(name="thing", resume=True)
    assert "starts over from step 0" in preparing_what(cfg, run)
    (run.checkpoint_dir(5)).mkdir()
    assert preparing_what(cfg, run) == "the run's cached latents and checkpoint"


# --- 2, 3, 6: refused before a run folder is made ---


def test_python_m_trainers_without_images_does_not_train_on_the_current_folder(tmp_path, monkeypatch, capsys):
    from trainers.__main__ import main as trainers_main

    images = square_images(tmp_path / "images")
    config, short = tmp_path / "run.toml", tmp_path / "short.txt"
    short.write_text("a [name]\n")
    config.write_text('name = "pm"\nsteps = 2\npreview_images = 0\nrefine_latents = 0\n')
    monkeypatch.chdir(images)
    assert trainers_main(["--config", str(config), "--home", str(tmp_path / "home")]) == 1
    assert "no images given" in capsys.readouterr().err
    assert not (tmp_path / "home" / "runs").exists()


@pytest.mark.parametrize("seed", [-1, 2**32, 100_000_000_000_000, 2**64 - 1])
def test_a_seed_out_of_range_is_refused_with_the_range(seed):
    with pytest.raises(ConfigError, match=r"seed = .*from 0 to 4294967295"):
        from_mapping({"seed": seed})
    assert from_mapping({"seed": 2**32 - 1}).seed == 2**32 - 1


def test_alpha_weight_without_alpha_and_a_model_typo_are_refused_before_the_run_folder(tmp_path):
    images = square_images(tmp_path / "images")  # RGB
    home = tmp_path / "home"
    with pytest.raises(TokensmithError, match="no training image has an alpha channel"):
        train(quick_config(images, tmp_path / "run", alpha_weight=True), home=home)
    with pytest.raises(TokensmithError, match=r"no model 'Demo'.*did you mean 'demo'"):
        train(quick_config(images, tmp_path / "run", model="Demo"), home=home)
    with pytest.raises(TokensmithError, match=r"no model '\./typo'"):
        train(quick_config(images, tmp_path / "run", model="./typo"), home=home)
    assert not (tmp_path / "run").exists()


# --- 4: the card's learning rate is the one the run used ---


def _card(config: dict) -> str:
    trainer = {"version": "tokensmith-ti/1", "end": "finished", "config": config}
    meta = {"family": "sd1", "base_model": "me/base", "steps": "6", "trainer": json.dumps(trainer)}
    import torch

    return model_card(Embedding("s-pw", {"emb_params": torch.zeros(1, 768)}, meta), "me/s-pw")


def test_the_card_gives_the_schedule_and_no_unused_learning_rate():
    card = _card({"learning_rate": 0.02, "lr_schedule": "0.005:2, 1e-3:4, 1e-4", "warmup_steps": 0})
    assert "- lr_schedule: `0.005:2, 1e-3:4, 1e-4`" in card and "learning_rate" not in card
    card = _card({"learning_rate": 0.01, "lr_schedule": "cosine", "warmup_steps": 5})
    assert "- learning_rate: `0.01`\n- lr_schedule: `cosine`\n- warmup_steps: `5`" in card


# --- polish: inputs that would be ignored, spellings ---


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"lr_schedule": "0.005:0"}, "the step 0 in '0.005:0' must be 1 or more"),
        ({"lr_schedule": "0.005:-10, 0.001"}, "the step -10"),
        ({"lr_schedule": "0.005:100", "learning_rate": 0.01}, "learning_rate = 0.01 is not used"),
        ({"warmup_steps": 3}, "warmup_steps = 3 does nothing under lr_schedule constant"),
        (
            {"lr_schedule": "0.005:100, 1e-3", "warmup_steps": 3},
            "warmup_steps = 3 does nothing under the pie",
        ),
        ({"hub_private": True}, "hub_private is for an upload"),
    ],
)
def test_settings_the_run_would_ignore_are_refused(values, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        from_mapping(values)


def test_turning_validation_off_says_that_early_stopping_goes_with_it():
    from trainers.config import setting_notes

    (note,) = setting_notes(TrainConfig(validate_every=0, steps=40))
    assert "turns off the validation loss, and early stopping with it" in note and "step 40" in note
    assert setting_notes(TrainConfig(validate_every=0, early_stopping=False)) == []
    assert setting_notes(TrainConfig()) == []


def test_a_warmup_schedule_without_warmup_steps_is_said_to_be_constant():
    from trainers.config import setting_notes

    (note,) = setting_notes(TrainConfig(lr_schedule="warmup"))
    assert "is a constant rate: give --warmup-steps N" in note
    assert setting_notes(TrainConfig(lr_schedule="warmup", warmup_steps=5)) == []


def test_schedule_names_are_read_as_typed_and_stored_in_one_spelling():
    assert from_mapping({"lr_schedule": "Cosine ", "warmup_steps": 2}).lr_schedule == "cosine"
    assert TrainConfig(lr_schedule=" 0.005:100, 1e-3 ").lr_schedule == "0.005:100, 1e-3"


def test_a_config_file_suffix_in_capitals_and_a_flag_spelled_key(tmp_path):
    (tmp_path / "RUN.TOML").write_text("steps = 7\n")
    assert load(tmp_path / "RUN.TOML").steps == 7
    (tmp_path / "dash.toml").write_text("batch-size = 2\n")
    with pytest.raises(ConfigError, match=r"did you mean batch-size -> batch_size\?"):
        load(tmp_path / "dash.toml")


def test_style_with_other_templates_is_a_usage_error(tmp_path, capsys):
    images = square_images(tmp_path / "images")
    argv = ["train", "--images", str(images), "--name", "x", "--style", "--templates", "captions"]
    assert main(argv) == EXIT_USAGE
    assert "--style is --templates style; it cannot go with --templates captions" in capsys.readouterr().err


def test_an_rgba_image_lets_alpha_weight_through_the_early_check(tmp_path):
    from trainers.data import check_alpha, load_images

    Image.new("RGBA", (16, 16), (200, 0, 0, 255)).save(tmp_path / "a.png")
    check_alpha(load_images(tmp_path), alpha_weight=True)  # no error


def test_a_key_the_schedule_does_not_read_is_not_a_change_on_resume():
    """A run from before such keys were refused (warmup_steps under constant) resumes once it is dropped."""
    from trainers.resume import computed_values, config_changes

    saved = {**computed_values(TrainConfig()), "warmup_steps": 3}
    assert config_changes(saved, TrainConfig()) == []
    assert config_changes(saved, TrainConfig(lr_schedule="warmup")) == [
        "lr_schedule: 'constant' -> 'warmup'",
        "warmup_steps: 3 -> 0",
    ]


def test_a_run_without_validation_prints_that_it_will_not_stop_early(tmp_path):
    said = []
    cfg = quick_config(square_images(tmp_path / "images"), tmp_path / "run", validate_every=0, steps=1)
    train(cfg, home=tmp_path / "home", model=tiny_model("sd1"), echo=said.append)
    assert [line for line in said if "early stopping with it" in line] == [
        "note: --validate-every 0 (validate_every = 0) turns off the validation loss, and early stopping "
        "with it (it reads those losses): the run goes to step 1; validate every N steps to stop early"
    ]
