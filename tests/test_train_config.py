"""TrainConfig: files, flags, unknown keys, resolved config and the equivalent commands."""

import tomllib
from pathlib import Path

import pytest
import torch

from trainers.commands import equivalent_commands, to_flags, to_toml
from trainers.config import ConfigError, TrainConfig
from trainers.configfile import from_mapping, load


def test_toml_file_and_flags_fill_one_config(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('images = "shots"\nname = "cat"\nsteps = 300\nflip = false\ntrackers = ["tensorboard"]\n')
    cfg = load(path, overrides={"steps": "120", "learning_rate": "0.01"})
    assert (cfg.images, cfg.name, cfg.steps, cfg.flip, cfg.learning_rate) == (
        "shots",
        "cat",
        120,
        False,
        0.01,
    )
    assert cfg.trackers == ["tensorboard"]


def test_yaml_file_is_read_like_toml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("images: shots\nname: cat\nvectors: 3\nlr_schedule: '0.005:100, 1e-3:1000'\n")
    cfg = load(path)
    assert (cfg.vectors, cfg.lr_schedule) == (3, "0.005:100, 1e-3:1000")


def test_unknown_key_is_an_error_listing_valid_keys(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("images = 'x'\nlearning_rat = 0.1\n")
    with pytest.raises(ConfigError, match="learning_rat") as info:
        load(path)
    assert "learning_rate" in str(info.value) and "batch_size" in str(info.value)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"steps": "many"}, "steps must be a whole number"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"crop": "squash"}, "crop = 'squash' is not one of center, random, bucket"),
        ({"flip": "maybe"}, "flip must be true or false"),
        ({"learning_rate": -1}, "learning_rate must be positive"),
        ({"trackers": ["mlflow"]}, "tracker 'mlflow'"),
        ({"templates": "poems"}, "templates = 'poems'"),
        ({"steps": 2.5}, "whole number"),
        ({"refine_latents": -2}, "refine_latents must be -1"),
        ({"preview_images": -2}, "preview_images must be -1"),
        ({"preview_steps": 0}, "preview_steps must be at least 1"),
        ({"resolution": 100000}, "resolution = 100000 is larger than any Stable Diffusion model"),
        ({"learning_rate": "nan"}, "learning_rate must be a finite number"),
        ({"dvar_threshold": "inf"}, "dvar_threshold must be a finite number"),
        ({"lr_schedule": "nan:100, 0.01"}, "lr_schedule: learning rate nan"),
        ({"push_to_hub": "not a repo"}, "hub repo 'not a repo': give a repo id like 'your-name/"),
        ({"push_to_hub": "me/"}, "hub repo 'me/'"),
        ({"init": True}, "init must be text, got True; quote it in YAML"),
        ({"preview_prompt": "a cat"}, "preview_prompt = 'a cat' has no \\[name\\]"),
        ({"lr_schedule": "cosin"}, "lr_schedule: unknown learning-rate schedule 'cosin'"),
        ({"lr_schedule": "0.01:100, 0.02:50"}, "lr_schedule: the steps in"),
    ],
)
def test_bad_values_say_what_is_wrong(values, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        from_mapping(values)


def test_bad_toml_and_wrong_suffix_are_clear_errors(tmp_path):
    (tmp_path / "bad.toml").write_text("steps = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path / "bad.toml")
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"must end in \.toml"):
        load(tmp_path / "run.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml")


def test_resolved_toml_round_trips_to_the_same_config():
    cfg = TrainConfig(images='a b/"quoted"', name="cat", steps=77, flip=False, trackers=["wandb"], seed=3)
    text = to_toml(cfg)
    assert from_mapping(tomllib.loads(text)) == cfg


def test_equivalent_commands_rebuild_the_config():
    cfg = TrainConfig(images="my shots", name="cat", steps=77, flip=False, learning_rate=0.01)
    single, multi = equivalent_commands(cfg, "/runs/cat/config.toml")
    assert (
        single == "tokensmith train --images 'my shots' --name cat --no-flip --steps 77 --learning-rate 0.01"
    )
    assert multi == "accelerate launch -m trainers --config /runs/cat/config.toml"
    assert to_flags(TrainConfig()) == []


def test_replace_checks_the_new_values():
    with pytest.raises(ConfigError):
        TrainConfig().replace(batch_size=0)


def test_vectors_zero_means_the_init_embeddings_count_else_the_familys_default(tmp_path):
    from embeddings import Embedding, Store
    from trainers.families import spec_for
    from trainers.modelprep import resolve_vectors, stored_init

    store = Store(tmp_path / "store")
    store.put(Embedding("three", {"emb_params": torch.randn(3, 64)}))
    demo, sd1 = spec_for("demo"), spec_for("sd1")
    assert TrainConfig().vectors == 0

    def vectors(cfg, spec):
        return resolve_vectors(cfg, spec, stored_init(cfg, spec, store))

    assert vectors(TrainConfig(), demo) == 2  # a colour word and a shape word
    assert vectors(TrainConfig(), sd1) == 1
    assert vectors(TrainConfig(init="<three>"), demo) == 3
    assert vectors(TrainConfig(vectors=4, init="<three>"), demo) == 4
    with pytest.raises(ConfigError, match="vectors must not be negative"):
        TrainConfig(vectors=-1)
    for mixed in ("<three", "red <three>", "<three> <three>"):  # a typo, or words and an embedding together
        with pytest.raises(ConfigError, match="write its name alone in brackets"):
            TrainConfig(init=mixed)  # refused with the config, before any model loads


def test_config_and_template_files_that_are_not_utf8_name_the_file(tmp_path):
    from trainers.configfile import read_file
    from trainers.data import DataError, template_set

    config = tmp_path / "run.toml"
    config.write_bytes("name = 'caf\u00e9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"run\.toml is not UTF-8 text .*save it as UTF-8"):
        read_file(config)
    templates = tmp_path / "t.txt"
    templates.write_bytes("a [name] au caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"t\.txt is not UTF-8 text"):
        template_set(str(templates))


def test_a_new_run_is_numbered_after_the_highest_run_folder(tmp_path):
    from trainers.session import resolve_run_dir

    runs = tmp_path / "runs"
    for folder in ("cat", "cat-3"):  # the user deleted cat-2
        (runs / folder).mkdir(parents=True)
        (runs / folder / "progress.jsonl").write_text("{}\n")
    assert resolve_run_dir(TrainConfig(name="cat"), tmp_path) == runs / "cat-4"
    assert resolve_run_dir(TrainConfig(name="cat", resume=True), tmp_path) == runs / "cat-3"
    assert resolve_run_dir(TrainConfig(name="dog"), tmp_path) == runs / "dog"
    (runs / "dog").mkdir()
    (runs / "dog" / "progress.jsonl").write_text("{}\n")
    assert resolve_run_dir(TrainConfig(name="dog"), tmp_path) == runs / "dog-2"
    # --resume by name: the newest run that did not finish, before a newer finished one; else the newest
    (runs / "cat-3" / "progress.jsonl").write_text('{"step": 0}\n{"event": "done", "message": "stored"}\n')
    assert resolve_run_dir(TrainConfig(name="cat", resume=True), tmp_path) == runs / "cat"
    (runs / "cat" / "progress.jsonl").write_text('{"step": 0}\n{"event": "done", "message": "stored"}\n')
    assert resolve_run_dir(TrainConfig(name="cat", resume=True), tmp_path) == runs / "cat-3"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("init:\n", "init is empty; give it a value, or delete the line for its default"),
        ("run_dir:\n", "run_dir is empty"),
        ("model_config: ~\n", "model_config is empty"),
        ("steps:\n", r"steps is empty; give it a value, or delete the line for its default \(150\)"),
        ("name: 0123\n", r'name must be text, got the number 83; quote it \(name: "..."\)'),  # YAML's octal
        ("init: 1_000\n", "init must be text, got the number 1000; quote it"),
        ("lr_schedule: 0.005\n", "lr_schedule must be text, got the number 0.005; quote it"),
    ],
)
def test_empty_yaml_values_and_numbers_for_text_keys_are_refused_by_name(tmp_path, text, fragment):
    path = tmp_path / "run.yaml"
    path.write_text("images: shots\n" + text)
    with pytest.raises(ConfigError, match=fragment):
        load(path)


def test_a_train_key_that_is_not_a_table_is_a_config_error(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("train = 5\n")
    with pytest.raises(ConfigError, match=r"train = 5 is not a table"):
        load(path)
    path.write_text("[train]\nname = 'cat'\n")
    assert load(path).name == "cat"


def test_local_paths_become_absolute_and_hub_ids_stay_as_given(tmp_path, monkeypatch):
    from trainers.config import absolute_path, with_absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sd15").mkdir()
    (tmp_path / "owner" / "repo").mkdir(parents=True)  # a folder here wins over the hub, as in load_model
    (tmp_path / "prompts.txt").write_text("a [name]\n")
    cfg = TrainConfig(
        images="shots",
        name="cat",
        model="sd15",
        model_config="owner/repo",
        clip_model="openai/clip-vit-base-patch32",
        templates="prompts.txt",
        run_dir="~/runs/cat",
    )
    absolute = with_absolute_paths(cfg)
    assert absolute.images == str(tmp_path / "shots")  # not there yet: load_images says so by its full name
    assert absolute.model == str(tmp_path / "sd15")
    assert absolute.model_config == str(tmp_path / "owner" / "repo")
    assert absolute.clip_model == "openai/clip-vit-base-patch32"  # no such folder here: a hub id
    assert absolute.templates == str(tmp_path / "prompts.txt")
    assert absolute.run_dir == str(Path("~/runs/cat").expanduser().resolve())
    (tmp_path / "demo").mkdir()
    (tmp_path / "object").write_text("")
    assert absolute_path("model", "demo") == "demo"  # the demo world, as load_model reads it
    assert absolute_path("templates", "object") == "object"
    assert absolute_path("model", "runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert absolute_path("model_config", "") == ""


def test_equivalent_commands_name_a_home_that_is_not_the_default(tmp_path, monkeypatch):
    cfg = TrainConfig(images="/shots", name="cat", run_dir="/runs/cat")
    single, multi = equivalent_commands(cfg, "/runs/cat/config.toml", home=tmp_path / "h")
    assert single.endswith(f"--run-dir /runs/cat --home {tmp_path / 'h'}")
    assert multi == f"accelerate launch -m trainers --config /runs/cat/config.toml --home {tmp_path / 'h'}"
    default_home = Path("~/.tokensmith").expanduser()
    monkeypatch.delenv("TOKENSMITH_HOME")
    default = equivalent_commands(cfg, "/runs/cat/config.toml", home=default_home)
    assert "--home" not in " ".join(default)
    # with $TOKENSMITH_HOME elsewhere, a bare command would store there: the default home is named
    monkeypatch.setenv("TOKENSMITH_HOME", str(tmp_path / "elsewhere"))
    single, _ = equivalent_commands(cfg, "/runs/cat/config.toml", home=default_home)
    assert single.endswith(f"--home {default_home.resolve()}")
    header = to_toml(cfg, home=tmp_path / "h").splitlines()[:3]
    run = f"tokensmith train --config THIS_FILE --home {tmp_path / 'h'}"
    assert header[0] == f"# tokensmith training config (resolved); run it with: {run}"
    assert header[1] == f"# once its run has begun, continue it with: {run} --resume"
    assert header[2].endswith(f"--home {tmp_path / 'h'} --run-dir NEW_DIR")


def test_the_single_process_command_of_several_processes_accumulates_their_micro_batches():
    from trainers.commands import command_notes

    cfg = TrainConfig(images="/shots", name="cat", batch_size=2, grad_accum=3, run_dir="/runs/cat")
    single, multi = equivalent_commands(cfg, "/runs/cat/config.toml", processes=2)
    assert "--batch-size 2 --grad-accum 6" in single  # one process: 2 processes' micro-batches each step
    assert multi == "accelerate launch --num_processes 2 -m trainers --config /runs/cat/config.toml"
    _, on_cpu = equivalent_commands(cfg, "/runs/cat/config.toml", processes=2, cpu=True)
    # the README's CPU recipe: Accelerate's launcher would start one CPU process
    recipe = "ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 -m trainers --config"
    assert on_cpu == f"{recipe} /runs/cat/config.toml"
    accumulate, again = command_notes(cfg, processes=2)
    assert "--grad-accum 6" in accumulate and "2 processes at --grad-accum 3" in accumulate
    assert "add --resume to the launch command" in again and "--run-dir NEW_DIR" in again
