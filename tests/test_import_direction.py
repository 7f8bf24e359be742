"""The direction of imports (DESIGN.md): studio -> trainers -> embeddings; nothing imports studio."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "embeddings": {"streamlit", "accelerate", "trainers", "studio"},
    "trainers": {"streamlit", "studio"},
    "demo": {"streamlit", "studio"},
}


def imported_top_level_names(path: Path) -> set[str]:
    """Top-level package names a Python file imports (absolute imports only; relative ones stay inside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imported_top_level_names_sees_both_import_forms(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import streamlit as st\nfrom studio.cli import main\nfrom . import sibling\n")
    assert imported_top_level_names(sample) == {"streamlit", "studio"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_forbidden_layers(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files parsed under {package}/"
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in imported_top_level_names(path) & FORBIDDEN[package]
    }
    assert not offenders, sorted(offenders)
