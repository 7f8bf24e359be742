"""studio/cli_generate.py and cli_explore.py: generate, variations, schedule, replay and grid as a user runs
them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from embeddings import Embedding, Store
from studio.cli import main
from studio.generation import read_provenance
from trainers.tiny import tiny_pipeline

COMMANDS = ("generate", "variations", "schedule", "replay", "grid")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_pipeline("sd1").save_pretrained(folder)
    return str(folder)


@pytest.fixture
def store(tokensmith_home):
    store = Store.for_home(tokensmith_home)
    store.put(
        Embedding("cat", {"emb_params": torch.randn(1, 32, generator=torch.Generator().manual_seed(3))})
    )
    return store


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "Example" in capsys.readouterr().out


def test_generate_writes_a_png_with_provenance(model_dir, store, tmp_path, capsys):
    out = tmp_path / "img.png"
    code, stdout, _err = run(
        capsys,
        "generate",
        "a <cat> circle",
        "--model",
        model_dir,
        "--steps",
        "4",
        "--seed",
        "5",
        "--out",
        str(out),
    )
    assert code == 0 and stdout.strip() == f"wrote {out} (seed 5)"
    prov = read_provenance(out)
    assert prov["seed"] == 5 and prov["embeddings"][0]["name"] == "cat" and prov["model"] == model_dir


def test_several_images_go_into_a_folder(model_dir, tmp_path, capsys):
    code, stdout, _err = run(
        capsys,
        "generate",
        "a red circle",
        "--model",
        model_dir,
        "--steps",
        "4",
        "-n",
        "2",
        "--out",
        str(tmp_path / "many"),
        "--json",
    )
    assert code == 0
    written = json.loads(stdout)
    assert [w["seed"] for w in written] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == [
        "a-red-circle-s0.png",
        "a-red-circle-s1.png",
    ]


def test_swap_on_the_command_line_equals_the_written_token(model_dir, store, tmp_path, capsys):
    common = ("--model", model_dir, "--steps", "4")
    run(capsys, "generate", "a puppy", "--swap", "puppy=<cat>", *common, "--out", str(tmp_path / "swap.png"))
    run(capsys, "generate", "a <cat>", *common, "--out", str(tmp_path / "written.png"))
    assert np.array_equal(pixels(tmp_path / "swap.png"), pixels(tmp_path / "written.png"))


def test_replay_reproduces_the_image(model_dir, store, tmp_path, capsys):
    first = tmp_path / "first.png"
    run(
        capsys,
        "generate",
        "a <0.7*<cat> + 0.3*red>",
        "--model",
        model_dir,
        "--steps",
        "4",
        "--guide",
        "color=green,scale=0.3",
        "--out",
        str(first),
    )
    code, stdout, _err = run(capsys, "replay", str(first), "--out", str(tmp_path / "again.png"))
    assert code == 0 and "pixel-identical" in stdout
    assert np.array_equal(pixels(first), pixels(tmp_path / "again.png"))


def test_trace_writes_a_strip(model_dir, tmp_path, capsys):
    code, stdout, _err = run(
        capsys,
        "generate",
        "a circle",
        "--model",
        model_dir,
        "--steps",
        "4",
        "--out",
        str(tmp_path / "t.png"),
        "--trace",
        str(tmp_path / "trace"),
        "--trace-steps",
        "0,3",
    )
    assert code == 0 and "trace" in stdout
    assert (tmp_path / "trace" / "t-trace.png").is_file()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["a <catt>"], "did you mean <cat>"),
        (["a <0.5*<cat> + >"], "malformed blend"),
        (["a circle", "--guide", "sparkle=9"], "unknown guide"),
        (["a circle", "--init-image", "missing.png"], "does not exist"),
        (["a circle", "--init-image", "__FILE__", "--strength", "1.5"], "--strength"),
        (["a circle", "--swap", "puppy"], "--swap"),
        (["a circle", "--trace", "tr", "--trace-steps", "9"], "--trace-steps"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_no_file(model_dir, store, tmp_path, capsys, extra, words):
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"not an image")
    extra = [str(bad_image) if e == "__FILE__" else e for e in extra]
    out = tmp_path / "never.png"
    code, _stdout, err = run(
        capsys, "generate", *extra, "--model", model_dir, "--steps", "4", "--out", str(out)
    )
    last = err.strip().splitlines()[-1]
    assert code == 1 and words in last and last.startswith("tokensmith generate: error:")
    assert not out.exists()


def test_unreadable_init_image_is_refused(model_dir, tmp_path, capsys):
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"not an image")
    code, _stdout, err = run(
        capsys,
        "generate",
        "a circle",
        "--model",
        model_dir,
        "--init-image",
        str(bad_image),
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 1 and "cannot read init image" in err and not (tmp_path / "x.png").exists()


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    code, _stdout, err = run(
        capsys, "generate", "a circle", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")
    )
    assert code == 1 and "no model" in err


def test_schedule_plot_and_json(model_dir, tmp_path, capsys):
    out = tmp_path / "schedule.png"
    code, stdout, _err = run(
        capsys,
        "schedule",
        "--model",
        model_dir,
        "--scheduler",
        "ddim",
        "--steps",
        "5",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0 and out.is_file()
    report = json.loads(stdout)
    assert len(report["steps"]) == 5 and {"timestep", "alpha_bar", "sigma"} <= set(report["steps"][0])


def test_grid_and_variations(model_dir, store, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    code, stdout, _err = run(
        capsys,
        "grid",
        "a <{w}*<cat> + {1-w}*red>",
        "--seeds",
        "0-1",
        "--sweep",
        "w=0,1",
        "--model",
        model_dir,
        "--steps",
        "4",
        "--out",
        str(grid),
    )
    assert code == 0 and "2 values × 2 seeds" in stdout and grid.is_file()
    init = tmp_path / "init.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(init)
    variations = tmp_path / "var.png"
    code, stdout, _err = run(
        capsys,
        "variations",
        "--init-image",
        str(init),
        "--prompts",
        "a red square|a blue star",
        "--model",
        model_dir,
        "--steps",
        "4",
        "--out",
        str(variations),
    )
    assert code == 0 and variations.is_file() and "2 prompts" in stdout


def test_readme_generation_examples_parse():
    """Every generation command the README shows is accepted by the parser (the docs stay true)."""
    import re
    import shlex
    from pathlib import Path

    from studio.cli import build_parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("<!-- section: generation -->")[1].split("\n## ")[0]
    lines = [
        m.group(1)
        for m in re.finditer(rf"^(tokensmith (?:{'|'.join(COMMANDS)}) .*?)(?:\s+#.*)?$", section, re.M)
    ]
    assert len(lines) >= 10
    parser = build_parser()
    for line in lines:
        args = parser.parse_args(shlex.split(line)[1:])
        assert args.command in COMMANDS, line
