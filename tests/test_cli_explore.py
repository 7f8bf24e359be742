"""studio/cli_explore.py: variations, schedule, replay and grid as a user runs them
(tests/test_cli_generate.py has generate)."""

import json

import numpy as np
import pytest
from clirun import pixels, run
from PIL import Image


def test_replay_reproduces_the_image(tiny_model_dir, cat_stored, tmp_path, capsys):
    first = tmp_path / "first.png"
    run(
        capsys,
        "generate",
        "a <0.7*<cat> + 0.3*red>",
        "--model",
        tiny_model_dir,
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


def test_schedule_plot_and_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "schedule.png"
    code, stdout, _err = run(
        capsys,
        "schedule",
        "--model",
        tiny_model_dir,
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


def test_grid_and_variations(tiny_model_dir, cat_stored, tmp_path, capsys):
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
        tiny_model_dir,
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
        tiny_model_dir,
        "--steps",
        "4",
        "--out",
        str(variations),
    )
    assert code == 0 and variations.is_file() and "2 prompts" in stdout


@pytest.mark.parametrize("command", ["grid", "variations", "replay", "schedule"])
def test_other_outputs_are_not_overwritten_either(tiny_model_dir, tmp_path, capsys, command):
    out = tmp_path / "taken.png"
    out.write_bytes(b"mine")
    init = tmp_path / "init.png"
    Image.new("RGB", (16, 16), "red").save(init)
    argv = {
        "grid": ["grid", "a circle", "--seeds", "0", "--sweep", "guidance=1,2", "--model", tiny_model_dir],
        "variations": ["variations", "--init-image", str(init), "--prompts", "a", "--model", tiny_model_dir],
        "replay": ["replay", str(init)],
        "schedule": ["schedule", "--model", tiny_model_dir],
    }[command]
    code, _stdout, err = run(capsys, *argv, "--out", str(out))
    assert code == 1 and "already exists: pass --force" in err and out.read_bytes() == b"mine"


def test_replay_checks_out_before_generating(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import studio.generation

    def never(*args, **kwargs):
        raise AssertionError("replay ran before --out was checked")

    monkeypatch.setattr(studio.generation, "replay", never)
    code, _stdout, err = run(capsys, "replay", str(tmp_path / "any.png"), "--out", str(tmp_path / "x.jpg"))
    assert code == 1 and "use a .png name" in err


def test_replay_from_another_folder_refuses_a_different_match_image(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    for folder, colour in ((first, "green"), (elsewhere, "red")):
        folder.mkdir()
        Image.new("RGB", (16, 16), colour).save(folder / "ref.png")
    monkeypatch.chdir(first)
    run(capsys, "generate", "a circle", "--model", tiny_model_dir, "--steps", "2", "--guide", "match=ref.png",
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


def test_grid_strength_sweep_needs_and_uses_an_init_image(tiny_model_dir, tmp_path, capsys):
    common = ("--seeds", "0", "--sweep", "strength=0.5,1", "--model", tiny_model_dir, "--steps", "4")
    code, _stdout, err = run(capsys, "grid", "a circle", *common, "--out", str(tmp_path / "g.png"))
    assert code == 1 and "--init-image" in err and not (tmp_path / "g.png").exists()
    init = tmp_path / "init.png"
    Image.new("RGB", (16, 16), "red").save(init)
    code, stdout, _err = run(
        capsys, "grid", "a circle", *common, "--init-image", str(init), "--out", str(tmp_path / "g.png")
    )
    assert code == 0 and "2 values × 1 seed)" in stdout


def test_schedule_of_heun_has_one_row_per_step(tiny_model_dir, tmp_path, capsys):
    options = ["--scheduler", "heun", "--steps", "5", "--out", str(tmp_path / "heun.png"), "--json"]
    code, stdout, _err = run(capsys, "schedule", "--model", tiny_model_dir, *options)
    report = json.loads(stdout)
    assert code == 0 and len(report["steps"]) == 5 and report["model_evaluations"] == 9
    first, second, last = report["steps"][0], report["steps"][1], report["steps"][-1]
    assert first["evaluated_at"] == [first["timestep"], second["timestep"]] and len(last["evaluated_at"]) == 1


def test_schedule_refuses_more_steps_than_generate_allows(tiny_model_dir, tmp_path, capsys):
    code, _stdout, err = run(
        capsys, "schedule", "--model", tiny_model_dir, "--steps", "5000", "--out", str(tmp_path / "s.png")
    )
    assert code == 1 and "at most 1000" in err


def test_a_swap_needs_to_match_one_prompt_of_a_grid_or_variations(tiny_model_dir, tmp_path, capsys):
    common = ["--seeds", "0", "--model", tiny_model_dir, "--steps", "2", "--swap", "square=triangle"]
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


def test_replay_onto_the_image_itself_compares_with_the_original(
    tiny_model_dir, cat_stored, tmp_path, capsys, monkeypatch
):
    image = tmp_path / "img.png"
    assert (
        run(capsys, "generate", "a circle", "--model", tiny_model_dir, "--steps", "2", "--out", str(image))[0]
        == 0
    )
    from studio.generation import replaying

    real = replaying.replay

    def redrawn(*args, **kwargs):  # as if this machine drew it differently
        result = real(*args, **kwargs)
        result.image.paste((255, 0, 255), (0, 0, 4, 4))
        return result

    monkeypatch.setattr("studio.generation.replay", redrawn)
    code, stdout, _err = run(capsys, "replay", str(image), "--out", str(image), "--force")
    assert code == 0 and "differs from the original" in stdout


def test_grid_and_variations_find_an_unknown_embedding_before_any_row_renders(
    tiny_model_dir, cat_stored, tmp_path, capsys, monkeypatch
):
    """A typo in the last row's <name> is said before the model loads, not after the rows above it sampled."""
    import trainers.models

    def never(*args, **kwargs):
        raise AssertionError("the model loaded before every row's embeddings were checked")

    monkeypatch.setattr(trainers.models, "load_model", never)
    init = tmp_path / "init.png"
    Image.new("RGB", (16, 16), "red").save(init)
    common = ["--seeds", "0-1", "--model", tiny_model_dir, "--steps", "2"]
    for argv in (
        ["grid", "a <{e}>", "--sweep", "e=cat,nosuch"],
        ["grid", "a {c} circle", "--sweep", "c=red,blue", "--negative", "<nosuch>"],
        ["grid", "a red puppy", "--sweep", "guidance=1,2", "--swap", "puppy=<nosuch>"],
        ["variations", "--init-image", init, "--prompts", "a red square|a <nosuch>"],
    ):
        code, _stdout, err = run(capsys, *argv, *common, "--out", tmp_path / "g.png")
        assert code == 1 and "unknown embedding <nosuch>" in err and "step/s" not in err, err
        assert not (tmp_path / "g.png").exists()


def test_schedule_checks_model_config_before_loading(tiny_model_dir, tmp_path, capsys):
    code, _stdout, err = run(
        capsys, "schedule", "--model", tiny_model_dir, "--model-config", "/no/such/dir",
        "--out", tmp_path / "s.png",
    )  # fmt: skip
    assert code == 1 and "--model-config /no/such/dir does not exist" in err
