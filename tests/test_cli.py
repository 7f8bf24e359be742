"""The CLI's shared conventions: help, usage errors and the home folder."""

import pytest

from studio.cli import EXIT_USAGE, build_parser, home_dir, main


def test_no_command_prints_help_and_exits_with_usage_code(capsys):
    assert main([]) == EXIT_USAGE
    assert "usage: tokensmith" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == EXIT_USAGE


def test_home_dir_prefers_override_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSMITH_HOME", str(tmp_path / "env-home"))
    assert home_dir(tmp_path / "flag-home") == tmp_path / "flag-home"
    assert home_dir() == tmp_path / "env-home"
    monkeypatch.delenv("TOKENSMITH_HOME")
    assert str(home_dir()).endswith(".tokensmith")


def test_every_subcommand_has_help_with_an_example():
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices if parser._subparsers else {}
    for name, sub in subparsers.items():
        assert "example" in sub.format_help().lower(), f"`tokensmith {name} --help` shows no example"


def test_building_the_parser_does_not_import_torch():
    """`tokensmith --help` must stay fast: command modules import torch and diffusers only when they run."""
    import subprocess
    import sys

    code = (
        "import sys, studio.cli; studio.cli.build_parser(); "
        "print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
