"""Review fixes to the CLI conventions: image sizes past the limit and out-of-memory sampling get one line
(CLI and studio), --debug keeps the exit status, --home/--debug before the command, no flag abbreviations,
an empty $TOKENSMITH_HOME, and the README's exit codes."""

import re
from pathlib import Path

import pytest
import torch
from apppage import open_page
from clirun import run
from PIL import Image

import studio.cli
from embeddings import Embedding, Store
from embeddings.errors import TokensmithError
from studio.app import context
from studio.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from studio.generation import GenerateRequest, Session
from trainers.config import MAX_RESOLUTION

README = Path(__file__).resolve().parent.parent / "README.md"
CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)"
)


def out_of_memory(error: BaseException):
    """A Session._sample stand-in that fails as torch does when a tensor does not fit."""

    def sample(*args, **kwargs):
        raise error

    return sample


# --- image sizes (finding 1) ---


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "a red circle", "--width", "100000", "--height", "100000"],
        ["grid", "a red circle", "--sweep", "guidance=1,2", "--height", str(MAX_RESOLUTION + 8)],
        ["variations", "--init-image", "INIT", "--prompts", "a red circle|a blue star", "--width", "100000"],
    ],
)
def test_a_size_past_the_limit_is_one_line_naming_the_limit(argv, tmp_path, capsys):
    init = tmp_path / "init.png"
    Image.new("RGB", (32, 32), "red").save(init)
    argv = [init if a == "INIT" else a for a in argv]
    code, out, err = run(capsys, *argv, "--steps", "1", "--out", tmp_path / "out.png")
    assert code == EXIT_ERROR and out == ""
    assert f"at most {MAX_RESOLUTION}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "native size is" in err
    assert not (tmp_path / "out.png").exists()


def test_the_session_refuses_a_size_past_the_limit_but_replays_a_recorded_one(tiny_session, monkeypatch):
    for size in ({"width": MAX_RESOLUTION + 8}, {"height": 100000}):
        with pytest.raises(TokensmithError, match=f"is too large: at most {MAX_RESOLUTION}"):
            tiny_session.generate(GenerateRequest("a circle", steps=2, **size))
    # an image made before the limit fitted in memory: its replay is not refused (sampling is stubbed here)
    monkeypatch.setattr(tiny_session, "_sample", lambda *a: (Image.new("RGB", (8, 8)), None))
    big = GenerateRequest("a circle", steps=2, width=MAX_RESOLUTION + 8)
    [result] = tiny_session.generate(big, as_recorded=True)
    assert result.provenance["width"] == MAX_RESOLUTION + 8


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(CPU_OOM),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        MemoryError(),
    ],
)
def test_running_out_of_memory_while_sampling_names_the_size_to_change(error, tiny_session, monkeypatch):
    monkeypatch.setattr(tiny_session, "_sample", out_of_memory(error))
    with pytest.raises(TokensmithError) as info:
        tiny_session.generate(GenerateRequest("a circle", steps=2, width=64, height=32))
    message = str(info.value)
    assert message.startswith("generating a 64x32 image ran out of memory (")
    assert "use a smaller --width/--height (this model's native size is" in message
    assert "\n" not in message and "--guide" not in message


def test_out_of_memory_with_guides_names_them_too_and_other_errors_pass_through(tiny_session, monkeypatch):
    monkeypatch.setattr(tiny_session, "_sample", out_of_memory(RuntimeError(CPU_OOM)))
    with pytest.raises(TokensmithError, match=r"fewer loss guides \(--guide"):
        tiny_session.generate(GenerateRequest("a circle", steps=2, guides=("color=green",)))
    monkeypatch.setattr(tiny_session, "_sample", out_of_memory(RuntimeError("mat1 and mat2 shapes differ")))
    with pytest.raises(RuntimeError, match="shapes differ"):
        tiny_session.generate(GenerateRequest("a circle", steps=2))


def test_generate_out_of_memory_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Session, "_sample", out_of_memory(RuntimeError(CPU_OOM)))
    code, out, err = run(capsys, "generate", "a red circle", "--steps", "1", "--out", tmp_path / "x.png")
    assert code == EXIT_ERROR and out == "" and "Traceback" not in err
    assert err.startswith("tokensmith generate: error: generating a 32x32 image ran out of memory (")
    assert len(err.strip().splitlines()) == 1  # at the native size: smaller is not the advice
    assert "free memory on the device, or use one with more (this 32x32 image is already at most" in err


def test_the_studio_generate_page_shows_out_of_memory_in_its_own_words(tiny_session, monkeypatch):
    monkeypatch.setattr(context, "generation_session", lambda spec: tiny_session)
    monkeypatch.setattr(tiny_session, "_sample", out_of_memory(RuntimeError(CPU_OOM)))
    at = open_page("views/generate.py")
    at.text_area(key="gen_prompt").set_value("a red circle")
    at.slider(key="gen_steps").set_value(2)
    at.button(key="gen_go").click().run()
    assert not at.exception, at.exception
    [error] = [e.value for e in at.error]
    assert "ran out of memory" in error and "free memory on the device" in error and "Width" not in error


# --- --debug keeps the exit status (finding 2) ---


def test_debug_shows_the_traceback_of_a_usage_error_and_still_exits_2(capsys):
    assert main(["train", "--debug"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" in err and "usage: tokensmith train" in err
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("tokensmith train: error: --images and --name are required")


def test_debug_shows_the_traceback_of_another_error_and_still_exits_1(capsys):
    assert main(["show", "no-such-token", "--debug"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "tokensmith show: error: " in err


# --- --home and --debug before the command (finding 9) ---


def stored(home: Path, name: str) -> Path:
    Store.for_home(home).put(Embedding(name, {"emb_params": torch.zeros(1, 8)}))
    return home


def test_home_and_debug_are_taken_before_the_command_too(tmp_path, capsys):
    first, second = stored(tmp_path / "a", "alpha"), stored(tmp_path / "b", "beta")
    code, out, _ = run(capsys, "--home", first, "list", "--json")
    assert code == EXIT_OK and '"alpha"' in out
    code, out, _ = run(capsys, "--debug", "--home", first, "list", "--home", second, "--json")
    assert code == EXIT_OK and '"beta"' in out and '"alpha"' not in out  # the later one, as argparse does
    assert main(["--debug", "show", "no-such-token", "--home", str(first)]) == EXIT_ERROR
    assert "Traceback" in capsys.readouterr().err


def test_another_flag_of_the_command_before_it_is_told_where_it_goes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--json", "list"])
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: tokensmith list ")
    assert "tokensmith list: error: --json goes after the command: tokensmith list --json" in err


def test_the_top_level_help_says_where_home_and_debug_go(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--home DIR" in text and "--debug" in text and "go before or after the command" in text


# --- no abbreviations (finding 5) ---


@pytest.mark.parametrize(
    ("argv", "stray"),
    [
        (["generate", "a red circle", "--num", "2"], "--num 2"),
        (["list", "--js"], "--js"),
        (["--deb", "list"], "--deb"),
    ],
)
def test_a_prefix_of_a_flag_is_an_unknown_flag(argv, stray, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE
    assert f"error: unrecognized arguments: {stray}" in capsys.readouterr().err


# --- an empty TOKENSMITH_HOME (polish) ---


@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_tokensmith_home_is_a_usage_error_like_an_empty_home_flag(
    blank, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TOKENSMITH_HOME", blank)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # ~/.tokensmith must stay untouched
    with pytest.raises(SystemExit) as info:
        main(["list"])
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert (
        "usage: tokensmith list" in err and "tokensmith list: error: TOKENSMITH_HOME is set but empty" in err
    )
    with pytest.raises(studio.cli.UsageError, match="TOKENSMITH_HOME is set but empty"):
        studio.cli.home_dir()
    assert studio.cli.home_dir(tmp_path / "flag") == tmp_path / "flag"  # --home still wins
    assert not (tmp_path / "user").exists()


# --- the README's exit codes (finding 10) ---


def test_the_readme_lists_every_exit_code_the_cli_uses():
    text = " ".join(README.read_text().split())
    paragraph = text[text.index("Exit codes: 0 success") :].split("<!--")[0]
    codes = {value for name, value in vars(studio.cli).items() if re.fullmatch(r"EXIT_[A-Z_]+", name)}
    assert codes == {0, 1, 2, 130, 141}
    for code in codes:
        assert re.search(rf"\b{code}\b", paragraph), f"the README's exit codes do not name {code}"
