"""The direction of imports: studio -> trainers -> embeddings; nothing imports studio. The demo world's
`demo.world` and `demo.judge` (and `demo` itself, which names the model's folder) are leaves, on numpy and
PIL, that trainers and studio may use; the rest of `demo/` (its builder and training scripts) sits on
trainers."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "embeddings": {"streamlit", "accelerate", "trainers", "studio", "demo"},
    "trainers": {"streamlit", "studio"},
    "demo": {"streamlit", "studio"},
}
# the demo world's leaves: what trainers and studio import of demo/ must not lead back to them
DEMO_LEAVES = {"demo/__init__.py", "demo/world.py", "demo/judge.py"}
LEAF_FORBIDDEN = {"trainers", "studio", "accelerate", "diffusers", "transformers", "torch"}


def imported_modules(path: Path) -> set[str]:
    """The full names of the modules a Python file imports, at the top or inside a function (absolute
    imports only; relative ones stay inside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def imported_top_level_names(path: Path) -> set[str]:
    """Top-level package names a Python file imports."""
    return {name.split(".")[0] for name in imported_modules(path)}


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


def test_trainers_and_studio_use_only_the_demo_worlds_leaves():
    leaves = {path.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for path in DEMO_LEAVES}
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for package in ("trainers", "studio")
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] == "demo" and name not in leaves
    }
    assert not offenders, sorted(offenders)


@pytest.mark.parametrize("leaf", sorted(DEMO_LEAVES))
def test_the_demo_worlds_leaves_import_no_model_code(leaf):
    # they draw and judge images with numpy and PIL, so trainers may import them without a cycle
    imported = imported_top_level_names(ROOT / leaf) & LEAF_FORBIDDEN
    assert not imported, sorted(imported)
