"""The conventions every `tokensmith` command keeps (DESIGN.md "CLI conventions"): usage errors with the
command's own usage line, --home, --version, Ctrl-C, progress bars in logs, help text, paths checked before a
model loads."""

import io
import sys

import pytest
from clirun import run
from tinyrun import square_images

from studio.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, build_parser, home_dir, main, version
from trainers.config import ConfigError
from trainers.pathchecks import check_clip_model, check_model_config, model_config_unused


def usage_error(capsys, *argv) -> str:
    """stderr of `tokensmith ARGV`, which must exit 2 as argparse's usage errors do."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == EXIT_USAGE
    return capsys.readouterr().err


def commands() -> dict:
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices


# --- usage errors ---


@pytest.mark.parametrize(
    ("argv", "command", "stray"),
    [
        (["show", "bad-hands-5", "--bogus"], "show", "--bogus"),
        (["train", "--images", "d", "--name", "n", "--flip", "yes"], "train", "yes"),
        (["list", "extra"], "list", "extra"),
    ],
)
def test_an_unknown_flag_or_stray_argument_names_the_command_and_its_usage(argv, command, stray, capsys):
    err = usage_error(capsys, *argv)
    assert f"usage: tokensmith {command} " in err
    assert f"tokensmith {command}: error: unrecognized arguments: {stray}" in err
    assert "usage: tokensmith [-h]" not in err


def test_an_empty_home_is_a_usage_error_not_the_default_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOKENSMITH_HOME", str(tmp_path / "env-home"))
    err = usage_error(capsys, "list", "--home", "")
    assert "tokensmith list: error: --home is empty" in err and "usage: tokensmith list" in err
    for blank in ("", "  "):
        with pytest.raises(ValueError, match="--home is empty"):
            home_dir(blank)
    assert not (tmp_path / "env-home").exists()


def test_resume_without_a_run_to_find_is_a_usage_error(capsys):
    assert main(["train", "--resume"]) == EXIT_USAGE
    assert "--resume needs --run-dir DIR or --name NAME" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["train", "--name", "foo"], ["train", "--images", "x"], ["train", "--resume"]]
)
def test_a_usage_error_the_command_finds_itself_comes_with_its_usage_line(argv, capsys):
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: tokensmith train") and "tokensmith train: error: " in err


def test_demo_steps_below_one_is_a_usage_error_before_anything_is_rendered(tmp_path, capsys):
    for bad in ("0", "-5"):
        err = usage_error(capsys, "demo", "--steps", bad, "--out", tmp_path / "demo")
        assert "tokensmith demo: error: argument --steps: must be at least 1" in err
    assert not (tmp_path / "demo").exists()


def test_demo_out_that_is_a_file_is_refused_before_anything_is_rendered(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    code, _out, err = run(capsys, "demo", "--out", afile, "--steps", "1")
    assert code == EXIT_ERROR and f"--out {afile} is a file: give a folder" in err
    assert "rendered" not in err and afile.read_text() == "mine"


# --- top level ---


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tokensmith {version()}"
    assert version()[0].isdigit()


def test_ctrl_c_names_the_command_and_exits_130(monkeypatch, capsys):
    import studio.cli_embeddings

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(studio.cli_embeddings, "run_list", interrupted)
    code, out, err = run(capsys, "list")
    assert (code, out, err) == (EXIT_INTERRUPTED, "", "tokensmith list: interrupted\n")
    assert EXIT_INTERRUPTED == 130


# --- help ---


def test_every_command_has_a_description_and_every_argument_help():
    for name, sub in commands().items():
        assert sub.description, f"`tokensmith {name} --help` has no description line under usage"
        for action in sub._actions:
            assert action.help, f"`tokensmith {name} --help`: {action.dest} has no help text"


def test_demo_help_shows_the_seed_default(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the samples (default 0)" in text and "1 or more" in text


# --- progress bars ---


def test_progress_bars_into_a_log_draw_rarely_and_on_a_terminal_in_place(monkeypatch):
    """`tokensmith train ... 2>log`: every redraw of a bar would be kept in the log, so off a terminal a
    bar draws at most every LOG_BAR_SECONDS."""
    from studio.cli import LOG_BAR_SECONDS
    from studio.cli_generate import StepProgress
    from studio.cli_train import ProgressBar

    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    steps = StepProgress(100, "generate")
    steps(None)
    training = ProgressBar(100)
    training({"step": 1, "loss": 0.5})
    for bar in (steps.bar, training.bar):
        assert bar.mininterval >= LOG_BAR_SECONDS >= 30
    for _ in range(99):
        steps(None)
    steps.close()
    training.close()
    assert log.getvalue().count("\r") <= 6  # drawn at the start and the end, not once per step
    assert "0%" not in log.getvalue()  # a job shorter than LOG_BAR_SECONDS leaves no bar and no blanks

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    live = StepProgress(10, "generate")
    live(None)
    assert live.bar.mininterval < 1 and live.bar.dynamic_ncols
    live.close()


# --- paths checked before a model loads ---


def test_model_config_and_clip_model_paths_are_checked(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    check_model_config(str(configs))
    check_model_config("owner/sd15-configs")  # a hub id: looked up when the checkpoint loads
    check_model_config("")
    for missing in ("/no/such/dir", "nodir", str(tmp_path / "gone")):
        with pytest.raises(ConfigError, match=f"--model-config {missing} does not exist"):
            check_model_config(missing)
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"x")
    assert model_config_unused("demo", str(configs)) and model_config_unused(str(configs), str(configs))
    assert not model_config_unused(str(checkpoint), str(configs)) and not model_config_unused("demo", "")

    clip = tmp_path / "clip"
    clip.mkdir()
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        check_clip_model(str(clip))
    (clip / "config.json").write_text("{}")
    check_clip_model(str(clip))
    check_clip_model("openai/clip-vit-base-patch32")  # a hub id, for a model in the local cache
    with pytest.raises(ConfigError, match="--clip-model /no/dir does not exist: point it at a local CLIP"):
        check_clip_model("/no/dir")


@pytest.fixture
def images(tmp_path):
    return square_images(tmp_path / "images", 2)


QUICK = ["--steps", "1", "--batch-size", "1", "--preview-images", "0", "--validate-every", "0"]


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        (["--model-config", "nodir"], "--model-config nodir does not exist"),
        (["--clip-model", "/no/dir"], "--clip-model /no/dir does not exist"),
    ],
)
def test_train_refuses_a_missing_config_or_clip_folder_before_the_model_loads(
    images, tokensmith_home, flag, said, capsys
):
    code, _out, err = run(capsys, "train", "--images", images, "--name", "zz", *QUICK, *flag)
    assert code == EXIT_ERROR and said in err
    assert "preparing" not in err  # said before loading the model and caching latents
    assert not (tokensmith_home / "runs" / "zz").exists()  # and no failed run folder is left behind


def test_demo_leaves_out_the_trainers_advice_on_resume_which_it_has_no_flag_for():
    from studio.cli_demo import _demo_echo
    from trainers.commands import command_notes
    from trainers.config import TrainConfig

    written = []
    echo = _demo_echo(type("Bar", (), {"write": staticmethod(written.append)}))
    (advice,) = command_notes(TrainConfig(images="x", name="n", run_dir="r"))
    facts = ["note: training on 5 image(s) from x", "init: 'red circle' -> red, circle"]
    for line in (f"note: {advice}", *facts):
        echo(line)
    assert written == facts
