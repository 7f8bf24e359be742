"""The README embeddings section stays true: its Python example runs; it names every format and command."""

import re
from pathlib import Path

from embeddings.exporting import FORMATS
from studio.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def section(name: str) -> str:
    text = README.read_text()
    start = text.index(f"<!-- section: {name} -->")
    end = text.find("<!-- section:", start + 1)
    return text[start : end if end != -1 else None]


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(
        r"<!-- readme-test: embeddings-api -->\n```python\n(.*?)```", section("embeddings"), re.S
    )
    assert block, "the README lost its embeddings Python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "a photo of <mix> <mix>_1"
    assert (tmp_path / ".tokensmith" / "embeddings" / "cat.safetensors").is_file()


def test_readme_names_every_export_format_and_command():
    embeddings_text, cli_text = section("embeddings"), section("cli-reference")
    for fmt in FORMATS:
        assert f"`{fmt}`" in embeddings_text, fmt
    commands = ["import", "list", "show", "export", "rename", "rm", "restore", "blend", "nearest", "doctor"]
    registered = build_parser()._subparsers._group_actions[0].choices
    for command in commands:
        assert command in registered and f"`tokensmith {command}" in cli_text, command
