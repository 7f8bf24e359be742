"""`--json` on every command that reports a result (replay, grid, variations, blend, export, rename, rm,
restore, push and push --dry-run): JSON alone on stdout, its values those of the files on disk, the same keys
as the commands that had it (`path`, `name`, `sha256`, `provenance`), and errors unchanged."""

import json
from pathlib import Path

import pytest
import torch
from clirun import run
from PIL import Image

from embeddings import Embedding, Store, load_canonical
from embeddings.formats.diffusers import PAIR_NAMES
from studio.cli import EXIT_ERROR, EXIT_OK
from studio.generation import read_provenance
from studio.generation.sheets import cell_box
from tests.fakehub import RecordingApi

STEPS = ("--steps", "2")


def _vectors(n: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def _json(capsys, *argv) -> tuple[dict | list, str]:
    """The parsed stdout of a command that succeeds (stdout holds the JSON and nothing else), and stderr."""
    code, stdout, stderr = run(capsys, *argv)
    assert code == EXIT_OK, stderr
    return json.loads(stdout), stderr


# --- images ---


def test_replay_json_is_generate_json_entry_of_the_image(tiny_model_dir, cat_stored, tmp_path, capsys):
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    argv = ("generate", "a <cat> circle", "--model", tiny_model_dir, *STEPS, "--seed", "5", "--out", first)
    [made], _ = _json(capsys, *argv, "--json")
    entry, stderr = _json(capsys, "replay", first, "--out", again, "--json")
    assert entry["path"] == str(again) and again.is_file()
    assert entry["provenance"] == read_provenance(again) == made["provenance"]
    assert entry["seed"] == made["seed"] == 5
    assert (entry["source"], entry["cell"], entry["identical"]) == (str(first), None, True)
    assert "wrote" not in stderr  # the human line is replaced, not moved


def test_replay_json_of_a_grid_cell(tiny_model_dir, tmp_path, capsys):
    grid, cell = tmp_path / "grid.png", tmp_path / "cell.png"
    argv = ("grid", "a red circle", "--seeds", "0-1", "--sweep", "guidance=1,3", "--model", tiny_model_dir)
    assert run(capsys, *argv, *STEPS, "--out", grid)[0] == EXIT_OK
    entry, _ = _json(capsys, "replay", grid, "--cell", "3", "--out", cell, "--json")
    assert entry["cell"] == 3 and entry["identical"] is True and entry["source"] == str(grid)
    assert entry["provenance"] == read_provenance(cell) == read_provenance(grid, cell=3)
    assert (entry["provenance"]["guidance"], entry["seed"]) == (3.0, 0)  # row 2 (guidance=3), seed 0


def _check_cells(report: dict, sheet: Path, labels: list[dict]) -> None:
    """Each cell of a sheet's report is the sheet's own record: K as replay --cell takes it, the row's
    label, the seed, the provenance and box the PNG records."""
    seeds = report["seeds"]
    assert [c["cell"] for c in report["cells"]] == list(range(1, len(labels) * len(seeds) + 1))
    for k, cell in enumerate(report["cells"], start=1):
        label, seed = labels[(k - 1) // len(seeds)], seeds[(k - 1) % len(seeds)]
        assert {key: cell[key] for key in label} == label and cell["seed"] == seed
        assert cell["provenance"] == read_provenance(sheet, cell=k) and cell["provenance"]["seed"] == seed
        assert tuple(cell["box"]) == cell_box(sheet, k)


def test_grid_json_gives_the_sheet_the_sweep_and_each_cell(tiny_model_dir, cat_stored, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    prompt = "a <{w}*<cat> + {1-w}*red>"
    argv = ("grid", prompt, "--seeds", "0,7", "--sweep", "w=0,1", "--model", tiny_model_dir, *STEPS)
    report, _ = _json(capsys, *argv, "--out", grid, "--json")
    assert report["path"] == str(grid) and grid.is_file()
    assert (report["prompt"], report["sweep"], report["seeds"]) == (
        prompt,
        {"name": "w", "values": ["0", "1"]},
        [0, 7],
    )
    _check_cells(report, grid, [{"value": "0"}, {"value": "1"}])
    assert report["cells"][2]["provenance"]["prompt"] == "a <1*<cat> + 0*red>"  # the row's filled-in prompt


def test_variations_json_gives_the_sheet_the_prompts_and_each_cell(tiny_model_dir, tmp_path, capsys):
    init, sheet = tmp_path / "init.png", tmp_path / "var.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(init)
    argv = ("variations", "--init-image", init, "--prompts", "a red square|a blue star", "--seeds", "2")
    report, _ = _json(capsys, *argv, "--model", tiny_model_dir, *STEPS, "--out", sheet, "--json")
    assert (report["path"], report["init_image"]) == (str(sheet), str(init)) and sheet.is_file()
    assert (report["prompts"], report["seeds"]) == (["a red square", "a blue star"], [2])
    _check_cells(report, sheet, [{"prompt": "a red square"}, {"prompt": "a blue star"}])
    assert [c["provenance"]["prompt"] for c in report["cells"]] == report["prompts"]


def test_schedule_json_names_the_plot_as_path(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "schedule.png"
    argv = ("schedule", "--model", tiny_model_dir, "--scheduler", "ddim", "--steps", "3", "--out", out)
    report, _ = _json(capsys, *argv, "--json")
    assert report["path"] == report["out"] == str(out) and out.is_file()  # `out`: its first name, kept
    assert len(report["steps"]) == 3


# --- the store ---


def _store(home) -> Store:
    store = Store.for_home(home)
    store.put(Embedding("cat", {"emb_params": _vectors(2, 768, 1)}))
    store.put(Embedding("dog", {"emb_params": _vectors(2, 768, 2)}))
    return store


def test_blend_json_is_what_show_json_prints_of_it(tokensmith_home, capsys):
    store = _store(tokensmith_home)
    stored, _ = _json(capsys, "blend", "0.5*<cat> + 0.5*<dog>", "--name", "catdog", "--keep-norm", "--json")
    shown, _ = _json(capsys, "show", "catdog", "--json")
    assert stored == shown
    assert stored["name"] == "catdog" and stored["path"] == str(store.path("catdog"))
    assert stored["sha256"] == load_canonical(store.path("catdog")).sha256
    parent = json.loads(stored["meta"]["parent"])
    assert [o["name"] for o in parent["operands"]] == ["cat", "dog"] and parent["keep_norm"] is True


def test_export_json_names_the_written_file(tokensmith_home, tmp_path, capsys):
    store = _store(tokensmith_home)
    out = tmp_path / "cat.safetensors"
    report, _ = _json(capsys, "export", "cat", "--format", "canonical", "--out", out, "--json")
    assert report == {
        "name": "cat",
        "format": "canonical",
        "path": str(out),
        "files": [str(out)],
        "sha256": store.get("cat").sha256,
    }
    assert load_canonical(out).sha256 == report["sha256"]


def test_export_json_names_each_file_of_an_sdxl_pair(tokensmith_home, tmp_path, capsys):
    store = Store.for_home(tokensmith_home)
    store.put(Embedding("my-xl", {"clip_l": _vectors(1, 768, 3), "clip_g": _vectors(1, 1280, 4)}))
    out = tmp_path / "my-xl"
    report, _ = _json(capsys, "export", "my-xl", "--format", "diffusers", "--out", f"{out}/", "--json")
    assert (report["path"], report["format"]) == (str(out), "diffusers")
    assert report["files"] == [str(out / name) for name in PAIR_NAMES]
    assert sorted(p.name for p in out.iterdir()) == sorted(PAIR_NAMES)


def test_rename_rm_restore_json_say_where_the_file_went(tokensmith_home, capsys):
    store = _store(tokensmith_home)
    Image.new("RGB", (8, 8), "orange").save(store.preview_path("cat"))
    old = store.path("cat")
    renamed, _ = _json(capsys, "rename", "cat", "kitty", "--json")
    assert renamed == {
        "old_name": "cat",
        "old_path": str(old),
        "name": "kitty",
        "path": str(store.path("kitty")),
        "preview": str(store.preview_path("kitty")),
    }
    assert Path(renamed["path"]).is_file() and not old.exists() and Path(renamed["preview"]).is_file()

    removed, stderr = _json(capsys, "rm", "kitty", "--json")
    trashed = Path(removed["path"])
    assert removed["name"] == "kitty" and removed["old_path"] == renamed["path"]
    assert trashed.is_file() and trashed.parent.parent == store.root / ".trash"
    assert load_canonical(trashed).name == "kitty" and not store.exists("kitty")
    assert removed["preview"] == str(trashed.with_name("kitty.preview.png"))
    assert Path(removed["preview"]).is_file()
    assert "`tokensmith restore kitty` brings it back" in stderr  # the note stays on stderr

    restored, _ = _json(capsys, "restore", "kitty", "--json")
    assert restored == {"name": "kitty", "path": renamed["path"], "preview": renamed["preview"]}
    assert store.exists("kitty") and not trashed.exists()


# --- push ---


def test_push_json_gives_the_url_and_the_uploaded_files(tokensmith_home, capsys, monkeypatch):
    import huggingface_hub

    store = _store(tokensmith_home)
    Image.new("RGB", (8, 8), "orange").save(store.preview_path("cat"))
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(RecordingApi, "uploads", [])
    report, _ = _json(capsys, "push", "cat", "me/cat", "--license", "mit", "--json")
    (uploaded,) = RecordingApi.uploads
    assert report == {
        "name": "cat",
        "repo": "me/cat",
        "url": "https://hub.example.org/me/cat",
        "uploaded": True,
        "files": ["cat.safetensors", "preview.png", "README.md"],
    }
    assert sorted(report["files"]) == sorted(uploaded)


def test_push_dry_run_json_gives_the_folder_and_the_files_written(tokensmith_home, tmp_path, capsys):
    _store(tokensmith_home)
    folder = tmp_path / "upload"
    report, stderr = _json(capsys, "push", "dog", "me/dog", "--license", "mit", "--dry-run", folder, "--json")
    assert report == {
        "name": "dog",
        "repo": "me/dog",
        "url": None,
        "uploaded": False,
        "files": ["dog.safetensors", "README.md"],  # no preview stored, none written
        "folder": str(folder),
        "paths": [str(folder / "dog.safetensors"), str(folder / "README.md")],
    }
    assert sorted(p.name for p in folder.iterdir()) == sorted(report["files"])
    assert "dry run: nothing was uploaded to me/dog" in stderr


# --- errors: unchanged by --json ---


@pytest.mark.parametrize(
    "argv",
    [
        ("rename", "nobody", "new"),
        ("rm", "nobody"),
        ("restore", "nobody"),
        ("export", "nobody", "--format", "canonical", "--out", "x.safetensors"),
        ("blend", "0.5*<nobody> + 0.5*<cat>", "--name", "mix"),
        ("push", "nobody", "me/nobody", "--dry-run", "d"),
        ("replay", "missing.png", "--out", "again.png"),
        ("grid", "a circle", "--sweep", "w=1", "--out", "grid.jpg"),
        ("variations", "--init-image", "missing.png", "--prompts", "a", "--out", "v.png"),
    ],
)
def test_errors_with_json_are_the_usual_line_and_no_stdout(tokensmith_home, tmp_path, capsys, argv):
    _store(tokensmith_home)
    files = (".png", ".jpg", ".safetensors")
    argv = [str(tmp_path / a) if a.endswith(files) or a == "d" else a for a in argv]  # paths in tmp_path
    code, stdout, stderr = run(capsys, *argv, "--json")
    assert (code, stdout) == (EXIT_ERROR, "")
    assert stderr.splitlines()[-1].startswith(f"tokensmith {argv[0]}: error: ")
    assert run(capsys, *argv)[2] == stderr  # the same error without --json
