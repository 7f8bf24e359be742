"""studio/cli_generate.py: `tokensmith generate` as a user runs it (tests/test_cli_explore.py has variations,
schedule, replay and grid), and what every image command shares: help examples, bad input, the README's
commands."""

import json

import numpy as np
import pytest
from clirun import pixels, run
from PIL import Image

from studio.cli import main
from studio.generation import read_provenance

COMMANDS = ("generate", "variations", "schedule", "replay", "grid")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "Example" in capsys.readouterr().out


def test_generate_writes_a_png_with_provenance(tiny_model_dir, cat_stored, tmp_path, capsys):
    out = tmp_path / "img.png"
    code, stdout, _err = run(
        capsys,
        "generate",
        "a <cat> circle",
        "--model",
        tiny_model_dir,
        "--steps",
        "4",
        "--seed",
        "5",
        "--out",
        str(out),
    )
    assert code == 0 and stdout.strip() == f"wrote {out} (seed 5)"
    prov = read_provenance(out)
    assert prov["seed"] == 5 and prov["embeddings"][0]["name"] == "cat" and prov["model"] == tiny_model_dir


def test_several_images_go_into_a_folder(tiny_model_dir, tmp_path, capsys):
    code, stdout, _err = run(
        capsys,
        "generate",
        "a red circle",
        "--model",
        tiny_model_dir,
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


def test_swap_on_the_command_line_equals_the_written_token(tiny_model_dir, cat_stored, tmp_path, capsys):
    common = ("--model", tiny_model_dir, "--steps", "4")
    run(capsys, "generate", "a puppy", "--swap", "puppy=<cat>", *common, "--out", str(tmp_path / "swap.png"))
    run(capsys, "generate", "a <cat>", *common, "--out", str(tmp_path / "written.png"))
    assert np.array_equal(pixels(tmp_path / "swap.png"), pixels(tmp_path / "written.png"))


def test_trace_writes_a_strip(tiny_model_dir, tmp_path, capsys):
    code, stdout, _err = run(
        capsys,
        "generate",
        "a circle",
        "--model",
        tiny_model_dir,
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
        (["a circle", "--guidance", "nan"], "--guidance must be a finite number"),
        (["a circle", "--width", "0"], "width 0 does not fit this model"),
        (["a puppy", "--swap", "pupy=<cat>"], "swap 'pupy' matches no word"),
        (["a circle", "--guide-module", "os:getcwd"], "cannot be called as function(image)"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_no_file(tiny_model_dir, cat_stored, tmp_path, capsys, extra, words):
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"not an image")
    extra = [str(bad_image) if e == "__FILE__" else str(tmp_path) if e == "__DIR__" else e for e in extra]
    out = tmp_path / "never.png"
    code, _stdout, err = run(
        capsys, "generate", *extra, "--model", tiny_model_dir, "--steps", "4", "--out", str(out)
    )
    last = err.strip().splitlines()[-1]
    assert code == 1 and words in last and last.startswith("tokensmith generate: error:")
    assert not out.exists() and "generate:   0%" not in err  # no empty progress bar above the error


def test_unreadable_init_image_is_refused(tiny_model_dir, tmp_path, capsys):
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"not an image")
    code, _stdout, err = run(
        capsys,
        "generate",
        "a circle",
        "--model",
        tiny_model_dir,
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


def test_an_existing_file_is_replaced_only_with_force(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "img.png"
    common = ("--model", tiny_model_dir, "--steps", "2", "--out", str(out))
    assert run(capsys, "generate", "a red circle", *common)[0] == 0
    before = out.read_bytes()
    code, _stdout, err = run(capsys, "generate", "a blue square", *common)
    assert code == 1 and f"{out} already exists: pass --force to replace it" in err
    assert out.read_bytes() == before
    assert run(capsys, "generate", "a blue square", *common, "--force")[0] == 0
    assert read_provenance(out)["prompt"] == "a blue square"


def test_prompts_with_the_same_file_name_get_their_own_files(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "ow"
    for prompt in ("a red circle", "A red circle!"):  # the same slug (also: prompts alike for 48 characters)
        argv = ("generate", prompt, "--model", tiny_model_dir, "--steps", "2", "--out", str(folder))
        assert run(capsys, *argv)[0] == 0
    made = sorted(folder.glob("*.png"))
    assert [p.name for p in made] == ["a-red-circle-s0-2.png", "a-red-circle-s0.png"]
    assert {read_provenance(p)["prompt"] for p in made} == {"a red circle", "A red circle!"}


def test_pndm_img2img_is_refused_though_the_session_counts_its_steps(tiny_model_dir, tmp_path, capsys):
    init = tmp_path / "init.png"
    Image.new("RGB", (16, 16), "red").save(init)
    trace = ["--trace", str(tmp_path / "tr"), "--out", str(tmp_path / "p.png")]
    args = ["a circle", "--model", tiny_model_dir, "--scheduler", "pndm", "--steps", "10", "--init-image",
            str(init), "--strength", "0.3", *trace]  # fmt: skip
    from studio.generation import GenerateRequest, Session

    runs = Session(str(tiny_model_dir)).step_count(
        GenerateRequest("a circle", scheduler="pndm", steps=10, init_image=str(init), strength=0.3)
    )
    assert runs == 9  # PNDM trims by evaluations: strength 0.3 of 10 steps enters its warm-up
    # which breaks strength, so a new image is refused (images made before still replay, with these steps)
    code, _stdout, err = run(capsys, "generate", *args, "--trace-steps", str(runs - 1))
    assert code == 1 and "scheduler pndm cannot start from an init image" in err, err


def _taken_while_sampling(monkeypatch, *paths):
    """Another process writes `paths` while this one samples (after the names were chosen)."""
    from studio.generation import Session

    sample = Session.each_image

    def each_image(self, *args, **kwargs):
        for index, result in enumerate(sample(self, *args, **kwargs)):
            if index == 0:  # the first image is sampled: the other process has written meanwhile
                for path in paths:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"another process's image")
            yield result

    monkeypatch.setattr(Session, "each_image", each_image)


def test_a_name_taken_while_sampling_moves_on_to_the_next_free_one(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    folder = tmp_path / "shared"
    _taken_while_sampling(monkeypatch, folder / "a-red-circle-s0.png", folder / "a-red-circle-s1.png")
    argv = ("generate", "a red circle", "--model", tiny_model_dir, "--steps", "2", "-n", "2", "--out", folder)
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert stdout.splitlines() == [
        f"wrote {folder / 'a-red-circle-s0-2.png'} (seed 0)",
        f"wrote {folder / 'a-red-circle-s1-2.png'} (seed 1)",
    ]
    assert (folder / "a-red-circle-s0.png").read_bytes() == b"another process's image"
    assert read_provenance(folder / "a-red-circle-s1-2.png")["seed"] == 1
    assert sorted(p.name for p in folder.iterdir()) == [  # no hidden temp file left
        "a-red-circle-s0-2.png",
        "a-red-circle-s0.png",
        "a-red-circle-s1-2.png",
        "a-red-circle-s1.png",
    ]


def test_an_out_file_made_while_sampling_is_refused_by_its_own_name(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "img.png"
    _taken_while_sampling(monkeypatch, out)
    code, _stdout, err = run(
        capsys, "generate", "a red circle", "--model", tiny_model_dir, "--steps", "2", "--out", out
    )
    assert code == 1
    assert f"error: {out} already exists: pass --force to replace it" in err and ".tmp" not in err
    assert out.read_bytes() == b"another process's image"
    assert [p.name for p in tmp_path.iterdir()] == ["img.png"]


def test_a_broken_link_in_the_output_folder_is_a_taken_name(tiny_model_dir, tmp_path, capsys):
    """A link to nothing does not exist() but its name cannot be written: it is skipped like a file (the
    write used to retry that same name for ever)."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a-red-circle-s0.png").symlink_to(tmp_path / "gone.png")
    argv = ("generate", "a red circle", "--model", tiny_model_dir, "--steps", "2", "--out", folder)
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert stdout.strip() == f"wrote {folder / 'a-red-circle-s0-2.png'} (seed 0)"


def test_out_is_a_folder_when_it_exists_or_ends_with_a_slash_even_named_with_a_dot(
    tiny_model_dir, tmp_path, capsys
):
    existing = tmp_path / "v1.2 outputs"
    existing.mkdir()
    common = ["a red circle", "--model", tiny_model_dir, "--steps", "2"]
    code, stdout, err = run(capsys, "generate", *common, "--out", str(existing))
    assert code == 0, err
    assert [p.name for p in existing.iterdir()] == ["a-red-circle-s0.png"] and str(existing) in stdout
    new = tmp_path / "run.v2"
    code, _stdout, err = run(capsys, "generate", *common, "-n", "2", "--out", f"{new}/")
    assert code == 0, err
    assert sorted(p.name for p in new.iterdir()) == ["a-red-circle-s0.png", "a-red-circle-s1.png"]
    code, _stdout, err = run(capsys, "generate", *common, "--out", str(tmp_path / "foo.jpg"))
    assert code == 1 and "--out" in err and "images are written as PNG: give a .png name, or a folder" in err


def test_an_unknown_embedding_or_model_config_is_refused_before_the_model_loads(
    tiny_model_dir, cat_stored, tmp_path, capsys, monkeypatch
):
    import trainers.models

    def never(*args, **kwargs):
        raise AssertionError("the model loaded before the arguments were checked")

    out = ["--out", str(tmp_path / "x.png")]
    with monkeypatch.context() as patch:
        patch.setattr(trainers.models, "load_model", never)
        for argv, said in (
            (["a <catt>"], "unknown embedding <catt>"),
            (["a circle", "--negative", "<nosuch>"], "unknown embedding <nosuch>"),
            (["a puppy", "--swap", "puppy=<nosuch>"], "unknown embedding <nosuch>"),
            (["a <0.5*<cat> + 0.5*<nosuch>>"], "unknown embedding <nosuch>"),
            (["a circle", "--model-config", "/no/such/dir"], "--model-config /no/such/dir does not exist"),
        ):
            code, _stdout, err = run(capsys, "generate", *argv, "--model", tiny_model_dir, *out)
            assert code == 1 and said in err, err
    # a --model-config that the model does not read (a diffusers folder has its own) is ignored, said so
    code, _stdout, err = run(
        capsys, "generate", "a <cat>", "--model", tiny_model_dir, "--model-config", tiny_model_dir,
        "--steps", "2", *out,
    )  # fmt: skip
    assert code == 0 and "tokensmith generate: warning: --model-config is only used for a single-file" in err
