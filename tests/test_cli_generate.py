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
        (["a circle", "--init-image", "__DIR__"], "is a folder: give an image file"),
        (["a circle", "--guidance", "nan"], "--guidance must be a number"),
        (["a circle", "--width", "0"], "width 0 does not fit this model"),
        (["a puppy", "--swap", "pupy=<cat>"], "swap 'pupy' matches no word"),
        (["a circle", "--guide-module", "os:getcwd"], "cannot be called as function(image)"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_no_file(model_dir, store, tmp_path, capsys, extra, words):
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"not an image")
    extra = [str(bad_image) if e == "__FILE__" else str(tmp_path) if e == "__DIR__" else e for e in extra]
    out = tmp_path / "never.png"
    code, _stdout, err = run(
        capsys, "generate", *extra, "--model", model_dir, "--steps", "4", "--out", str(out)
    )
    last = err.strip().splitlines()[-1]
    assert code == 1 and words in last and last.startswith("tokensmith generate: error:")
    assert not out.exists() and "generate:   0%" not in err  # no empty progress bar above the error


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


def test_an_existing_file_is_replaced_only_with_force(model_dir, tmp_path, capsys):
    out = tmp_path / "img.png"
    common = ("--model", model_dir, "--steps", "2", "--out", str(out))
    assert run(capsys, "generate", "a red circle", *common)[0] == 0
    before = out.read_bytes()
    code, _stdout, err = run(capsys, "generate", "a blue square", *common)
    assert code == 1 and f"{out} already exists: pass --force to replace it" in err
    assert out.read_bytes() == before
    assert run(capsys, "generate", "a blue square", *common, "--force")[0] == 0
    assert read_provenance(out)["prompt"] == "a blue square"


def test_prompts_with_the_same_file_name_get_their_own_files(model_dir, tmp_path, capsys):
    folder = tmp_path / "ow"
    for prompt in ("a red circle", "A red circle!"):  # the same slug (also: prompts alike for 48 characters)
        argv = ("generate", prompt, "--model", model_dir, "--steps", "2", "--out", str(folder))
        assert run(capsys, *argv)[0] == 0
    made = sorted(folder.glob("*.png"))
    assert [p.name for p in made] == ["a-red-circle-s0-2.png", "a-red-circle-s0.png"]
    assert {read_provenance(p)["prompt"] for p in made} == {"a red circle", "A red circle!"}


@pytest.mark.parametrize("command", ["grid", "variations", "replay", "schedule"])
def test_other_outputs_are_not_overwritten_either(model_dir, tmp_path, capsys, command):
    out = tmp_path / "taken.png"
    out.write_bytes(b"mine")
    init = tmp_path / "init.png"
    Image.new("RGB", (16, 16), "red").save(init)
    argv = {
        "grid": ["grid", "a circle", "--seeds", "0", "--sweep", "guidance=1,2", "--model", model_dir],
        "variations": ["variations", "--init-image", str(init), "--prompts", "a", "--model", model_dir],
        "replay": ["replay", str(init)],
        "schedule": ["schedule", "--model", model_dir],
    }[command]
    code, _stdout, err = run(capsys, *argv, "--out", str(out))
    assert code == 1 and "already exists: pass --force" in err and out.read_bytes() == b"mine"


def test_replay_checks_out_before_generating(model_dir, tmp_path, capsys, monkeypatch):
    import studio.generation

    def never(*args, **kwargs):
        raise AssertionError("replay ran before --out was checked")

    monkeypatch.setattr(studio.generation, "replay", never)
    code, _stdout, err = run(capsys, "replay", str(tmp_path / "any.png"), "--out", str(tmp_path / "x.jpg"))
    assert code == 1 and "use a .png name" in err


def test_replay_from_another_folder_refuses_a_different_match_image(model_dir, tmp_path, capsys, monkeypatch):
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    for folder, colour in ((first, "green"), (elsewhere, "red")):
        folder.mkdir()
        Image.new("RGB", (16, 16), colour).save(folder / "ref.png")
    monkeypatch.chdir(first)
    run(capsys, "generate", "a circle", "--model", model_dir, "--steps", "2", "--guide", "match=ref.png",
        "--out", str(tmp_path / "made.png"))  # fmt: skip
    monkeypatch.chdir(elsewhere)
    code, _stdout, err = run(
        capsys, "replay", str(tmp_path / "made.png"), "--out", str(tmp_path / "again.png")
    )
    assert code == 0 and "pixel-identical" in capsys.readouterr().out + _stdout
    Image.new("RGB", (16, 16), "blue").save(first / "ref.png")
    code, _stdout, err = run(
        capsys, "replay", str(tmp_path / "made.png"), "--out", str(tmp_path / "third.png")
    )
    assert code == 1 and "match image" in err and "has changed since" in err
    assert not (tmp_path / "third.png").exists()


def test_grid_strength_sweep_needs_and_uses_an_init_image(model_dir, tmp_path, capsys):
    common = ("--seeds", "0", "--sweep", "strength=0.5,1", "--model", model_dir, "--steps", "4")
    code, _stdout, err = run(capsys, "grid", "a circle", *common, "--out", str(tmp_path / "g.png"))
    assert code == 1 and "--init-image" in err and not (tmp_path / "g.png").exists()
    init = tmp_path / "init.png"
    Image.new("RGB", (16, 16), "red").save(init)
    code, stdout, _err = run(
        capsys, "grid", "a circle", *common, "--init-image", str(init), "--out", str(tmp_path / "g.png")
    )
    assert code == 0 and "2 values × 1 seeds" in stdout


def test_schedule_of_heun_has_one_row_per_step(model_dir, tmp_path, capsys):
    options = ["--scheduler", "heun", "--steps", "5", "--out", str(tmp_path / "heun.png"), "--json"]
    code, stdout, _err = run(capsys, "schedule", "--model", model_dir, *options)
    report = json.loads(stdout)
    assert code == 0 and len(report["steps"]) == 5 and report["model_evaluations"] == 9
    first, second, last = report["steps"][0], report["steps"][1], report["steps"][-1]
    assert first["evaluated_at"] == [first["timestep"], second["timestep"]] and len(last["evaluated_at"]) == 1


def test_schedule_refuses_more_steps_than_generate_allows(model_dir, tmp_path, capsys):
    code, _stdout, err = run(
        capsys, "schedule", "--model", model_dir, "--steps", "5000", "--out", str(tmp_path / "s.png")
    )
    assert code == 1 and "at most 1000" in err


def test_a_swap_needs_to_match_one_prompt_of_a_grid_or_variations(model_dir, tmp_path, capsys):
    common = ["--seeds", "0", "--model", model_dir, "--steps", "2", "--swap", "square=triangle"]
    sweep = ["--sweep", "shape=circle,square"]
    code, _stdout, err = run(
        capsys, "grid", "a red {shape}", *sweep, *common, "--out", str(tmp_path / "g.png")
    )
    assert code == 0, err
    init = tmp_path / "init.png"
    Image.new("RGB", (16, 16), "red").save(init)
    prompts = ["--prompts", "a red circle|a blue square", "--init-image", str(init)]
    code, _stdout, err = run(capsys, "variations", *prompts, *common, "--out", str(tmp_path / "v.png"))
    assert code == 0, err
    # a word in none of them is refused before anything renders
    code, _stdout, err = run(capsys, "grid", "a red {shape}", *sweep, *common[:-1], "star=triangle",
                             "--out", str(tmp_path / "g2.png"))  # fmt: skip
    assert code == 1 and "swap 'star' matches no word" in err and "step/s" not in err  # nothing rendered


def test_pndm_img2img_traces_the_steps_it_runs(model_dir, tmp_path, capsys):
    init = tmp_path / "init.png"
    Image.new("RGB", (16, 16), "red").save(init)
    trace = ["--trace", str(tmp_path / "tr"), "--out", str(tmp_path / "p.png")]
    args = ["a circle", "--model", model_dir, "--scheduler", "pndm", "--steps", "10", "--init-image",
            str(init), "--strength", "0.3", *trace]  # fmt: skip
    from studio.generation import GenerateRequest, Session

    runs = Session(str(model_dir)).step_count(
        GenerateRequest("a circle", scheduler="pndm", steps=10, init_image=str(init), strength=0.3)
    )
    code, _stdout, err = run(capsys, "generate", *args, "--trace-steps", str(runs - 1))
    assert code == 0, err  # the last step the session runs can be traced (it was refused past 3 of 10)


def test_replay_onto_the_image_itself_compares_with_the_original(
    model_dir, store, tmp_path, capsys, monkeypatch
):
    image = tmp_path / "img.png"
    assert (
        run(capsys, "generate", "a circle", "--model", model_dir, "--steps", "2", "--out", str(image))[0] == 0
    )
    from studio.generation import provenance

    real = provenance.replay

    def redrawn(*args, **kwargs):  # as if this machine drew it differently
        result = real(*args, **kwargs)
        result.image.paste((255, 0, 255), (0, 0, 4, 4))
        return result

    monkeypatch.setattr("studio.generation.replay", redrawn)
    code, stdout, _err = run(capsys, "replay", str(image), "--out", str(image), "--force")
    assert code == 0 and "differs from the original" in stdout
