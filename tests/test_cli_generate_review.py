"""Review fixes to the image and store commands: `generate -n` keeps each image as it is sampled, `replay`
draws a progress bar, `train --force`, train's stop message names the resume command, `list` names the folder
it looked in."""

import json

import pytest
import torch
from clirun import pixels, run

from embeddings import Embedding
from embeddings.errors import TokensmithError
from studio.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, build_parser, main
from studio.generation import GenerateRequest, Session, read_provenance, save_png
from trainers.commands import equivalent_commands
from trainers.models import load_model


def _stop_at_seed(monkeypatch, seed: int, error: BaseException):
    """Sampling the image of `seed` raises `error` (as Ctrl-C or running out of memory would)."""
    sample = Session._sample

    def sampling(self, req, nodes, negative, guides, init, this_seed, index, on_step):
        if this_seed == seed:
            raise error
        return sample(self, req, nodes, negative, guides, init, this_seed, index, on_step)

    monkeypatch.setattr(Session, "_sample", sampling)


def _generate(capsys, tiny_model_dir, out, *extra):
    argv = ("generate", "a red circle", "--model", tiny_model_dir, "--steps", "2", "-n", "4", "--out", out)
    return run(capsys, *argv, *extra)


# --- generate -n: each image written as it is sampled ---


def test_ctrl_c_during_generate_n_keeps_and_names_the_images_already_sampled(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    _stop_at_seed(monkeypatch, 2, KeyboardInterrupt())
    out = tmp_path / "many"
    code, stdout, err = _generate(capsys, tiny_model_dir, f"{out}/")
    first, second = out / "a-red-circle-s0.png", out / "a-red-circle-s1.png"
    assert code == EXIT_INTERRUPTED
    assert sorted(p.name for p in out.iterdir()) == [first.name, second.name]  # whole files, no temp file
    assert stdout.splitlines() == [f"wrote {first} (seed 0)", f"wrote {second} (seed 1)"]
    assert err.splitlines()[-2:] == [
        f"tokensmith generate: 2 of 4 images were written: {first}, {second}; --seed 2 -n 2 makes the rest",
        "tokensmith generate: interrupted",
    ]
    assert read_provenance(second)["seed"] == 1


def test_ctrl_c_with_json_prints_the_images_written(tiny_model_dir, tmp_path, capsys, monkeypatch):
    _stop_at_seed(monkeypatch, 1, KeyboardInterrupt())
    code, stdout, err = _generate(capsys, tiny_model_dir, tmp_path / "cats.png", "--json")
    assert code == EXIT_INTERRUPTED and "1 of 4 images were written" in err
    assert [entry["path"] for entry in json.loads(stdout)] == [str(tmp_path / "cats-s0.png")]


def test_ctrl_c_at_the_first_image_says_only_interrupted(tiny_model_dir, tmp_path, capsys, monkeypatch):
    _stop_at_seed(monkeypatch, 0, KeyboardInterrupt())
    code, stdout, err = _generate(capsys, tiny_model_dir, tmp_path / "none/")
    assert (code, stdout) == (EXIT_INTERRUPTED, "") and "images were written" not in err
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())


def test_each_image_is_written_before_the_next_one_samples(tiny_model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "many"
    on_disk = []
    sample = Session._sample

    def sampling(self, *args):
        on_disk.append(sorted(p.name for p in out.iterdir()) if out.is_dir() else [])
        return sample(self, *args)

    monkeypatch.setattr(Session, "_sample", sampling)
    code, _stdout, err = _generate(capsys, tiny_model_dir, f"{out}/")
    assert code == EXIT_OK, err
    names = [f"a-red-circle-s{seed}.png" for seed in range(4)]
    assert on_disk == [names[:k] for k in range(4)]


def test_a_late_failure_names_the_images_already_written(tiny_model_dir, tmp_path, capsys, monkeypatch):
    _stop_at_seed(monkeypatch, 3, TokensmithError("generating a 16x16 image ran out of memory"))
    out = tmp_path / "many"
    code, stdout, err = _generate(capsys, tiny_model_dir, f"{out}/")
    written = [out / f"a-red-circle-s{seed}.png" for seed in range(3)]
    assert code == EXIT_ERROR and len(stdout.splitlines()) == 3
    assert err.splitlines()[-1] == (
        "tokensmith generate: error: generating a 16x16 image ran out of memory (3 of 4 images were written: "
        + ", ".join(map(str, written))
        + "; --seed 3 -n 1 makes the rest)"
    )
    assert all(path.is_file() for path in written)


def test_generate_n_writes_the_bytes_one_batch_gives_and_each_image_replays(tiny_model_dir, tmp_path, capsys):
    """Image by image, the PNGs (pixels and provenance, batch_seed and batch_index too) are the ones the whole
    batch sampled at once gives, and each replays."""
    out = tmp_path / "many"
    argv = ("generate", "a red circle", "--model", tiny_model_dir, "--steps", "3", "--seed", "7", "-n", "3")
    code, _stdout, err = run(capsys, *argv, "--out", f"{out}/")
    assert code == EXIT_OK, err
    session = Session(load_model(tiny_model_dir))
    batch = session.generate(GenerateRequest("a red circle", steps=3, seed=7, num_images=3))
    for index, result in enumerate(batch):
        reference = save_png(result, tmp_path / f"reference-{index}.png")
        made = out / f"a-red-circle-s{7 + index}.png"
        assert made.read_bytes() == reference.read_bytes()
        assert (read_provenance(made)["batch_seed"], read_provenance(made)["batch_index"]) == (7, index)
    again = tmp_path / "again.png"
    code, stdout, err = run(capsys, "replay", out / "a-red-circle-s9.png", "--out", again)
    assert code == EXIT_OK and "pixel-identical" in stdout, err
    assert (pixels(again) == pixels(out / "a-red-circle-s9.png")).all()


# --- replay: a progress bar ---


def test_replay_draws_a_progress_bar(tiny_model_dir, tmp_path, capsys, monkeypatch):
    first = tmp_path / "first.png"
    run(capsys, "generate", "a circle", "--model", tiny_model_dir, "--steps", "3", "--out", first)
    monkeypatch.setattr("studio.cli.LOG_BAR_SECONDS", 0)  # into a pipe: the bar drawn at once, not after 30 s
    code, stdout, err = run(capsys, "replay", first, "--out", tmp_path / "again.png")
    assert code == EXIT_OK and "pixel-identical" in stdout
    assert "replay:" in err and "3/3" in err


def test_replay_still_says_what_is_missing_before_the_model_loads(
    tiny_model_dir, cat_stored, tmp_path, capsys, monkeypatch
):
    import trainers.models

    first = tmp_path / "first.png"
    run(capsys, "generate", "a <cat>", "--model", tiny_model_dir, "--steps", "2", "--out", first)
    cat_stored.delete("cat")

    def never(*args, **kwargs):
        raise AssertionError("the model loaded before replay said what is missing")

    monkeypatch.setattr(trainers.models, "load_model", never)
    code, _stdout, err = run(capsys, "replay", first, "--out", tmp_path / "again.png")
    assert code == EXIT_ERROR and "embedding <cat>" in err and "not in the store" in err


# --- train: --force, the stop message ---


def test_train_takes_force_as_overwrite_and_prints_a_command_that_parses_back(tmp_path):
    from studio.cli_train import config_from_args

    argv = ["train", "--images", "shots", "--name", "cat"]
    cfg = config_from_args(build_parser().parse_args([*argv, "--force"]))
    assert cfg.overwrite is True
    assert config_from_args(build_parser().parse_args([*argv, "--overwrite"])) == cfg
    assert config_from_args(build_parser().parse_args([*argv, "--no-force"])).overwrite is False
    single, _ = equivalent_commands(cfg, tmp_path / "config.toml")
    assert "--overwrite" in single.split()
    assert config_from_args(build_parser().parse_args(single.split()[1:])) == cfg


def test_a_stopped_train_names_the_command_that_resumes_it(tmp_path, capsys, monkeypatch):
    import trainers.trainer

    run_dir = tmp_path / "home" / "runs" / "cat"

    def stopped(cfg, *, home, on_progress, echo):
        trainer = {"end": "stopped", "trained_steps": 3, "config": {"run_dir": str(run_dir)}}
        return Embedding(
            cfg.name, {"emb_params": torch.zeros(1, 8)}, {"trainer": json.dumps(trainer), "steps": "3"}
        )

    monkeypatch.setattr(trainers.trainer, "train", stopped)
    code = main(["train", "--images", "x", "--name", "cat", "--home", str(tmp_path / "home")])
    err = capsys.readouterr().err
    resume = f"tokensmith train --run-dir {run_dir} --home {tmp_path / 'home'} --resume"
    assert code == EXIT_ERROR and f"tokensmith train: stopped at step 3; continue with: {resume}" in err


# --- list ---


def test_list_on_a_home_that_does_not_exist_names_the_folder_it_looked_in(tmp_path, capsys):
    typo = tmp_path / "my-hoem"
    code, stdout, err = run(capsys, "list", "--home", typo)
    assert (code, stdout) == (EXIT_OK, "")
    assert f"no embeddings in {typo / 'embeddings'} yet" in err


def test_train_help_lists_both_spellings_on_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--overwrite, --no-overwrite, --force, --no-force" in capsys.readouterr().out


def test_one_image_left_of_a_batch_into_a_file_names_the_file_it_would_have_had(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    """`-n 1 --out cats.png` writes cats.png, not cats-s3.png: the rest note says --out for the last one."""
    _stop_at_seed(monkeypatch, 3, KeyboardInterrupt())
    code, _, err = _generate(capsys, tiny_model_dir, tmp_path / "cats.png")
    assert code == EXIT_INTERRUPTED
    assert f"; --seed 3 -n 1 --out {tmp_path / 'cats-s3.png'} makes the rest" in err
