"""`tokensmith demo`, `demo-images` and `export` after the CLI conventions review: a file where a folder
should be is named (not '[Errno 20]' or 'File exists'), Ctrl-C stops the demo the same way in every phase,
demo-images takes generate's --num-images and refuses the seeds train refuses, and text a person reads says
"an orange star" while the prompts keep the captions the demo model was trained on."""

import json
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from clirun import run
from PIL import Image

import studio.generation
import trainers.models
from embeddings import Embedding, Store
from embeddings.exporting import export
from studio.cli import EXIT_ERROR, EXIT_OK, main
from studio.cli_demo_world import readable
from trainers import trainer as trainer_module
from trainers.config import MAX_SEED

# spelt out, not imported from studio.cli_demo: the words a person reads are what these tests check
STOPPED_TRAINING = "tokensmith demo: stopped before it finished training; run `tokensmith demo` again"


@pytest.fixture
def afile(tmp_path):
    """A file where a command's folder could be asked for."""
    path = tmp_path / "afile"
    path.write_text("mine")
    return path


# --- 1. a file on the way to the demo's folder ---


def test_demo_out_below_a_file_names_the_file_before_anything_is_rendered(afile, capsys):
    code, _, err = run(capsys, "demo", "--steps", "1", "--out", afile / "sub")
    assert code == EXIT_ERROR
    assert err.strip() == f"tokensmith demo: error: {afile} is a file, not a folder: choose another --out"
    assert afile.read_text() == "mine"


def test_demo_home_that_is_a_file_is_named_as_the_home(afile, capsys):
    code, _, err = run(capsys, "demo", "--steps", "1", "--home", afile)
    assert code == EXIT_ERROR and "Errno" not in err
    assert f"{afile} (the tokensmith home) is a file, not a folder: pass --home with a folder" in err
    code, _, err = run(capsys, "demo", "--steps", "1", "--home", afile / "home")
    assert f"{afile} is a file, not a folder, so the tokensmith home {afile / 'home'} cannot be made" in err
    assert "rendered" not in err and afile.read_text() == "mine"


def test_demo_default_folder_that_is_a_file_says_to_move_it_or_pass_out(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "demo").write_text("mine")
    code, _, err = run(capsys, "demo", "--steps", "1", "--home", home)
    assert code == EXIT_ERROR and f"{home / 'demo'} is a file, not a folder: move it, or pass --out" in err


def test_demo_images_out_below_a_file_names_the_file(afile, capsys):
    code, _, err = run(capsys, "demo-images", "red circle", "--out", afile / "sub")
    assert code == EXIT_ERROR
    assert err.strip().endswith(f"error: {afile} is a file, not a folder: choose another --out")


# --- 2. export below a file ---


def test_export_below_a_file_names_the_file_not_file_exists(afile, capsys, tokensmith_home):
    Store.for_home(tokensmith_home).put(Embedding("cat", {"emb_params": torch.ones(1, 32)}))
    code, _, err = run(capsys, "export", "cat", "--format", "a1111-pt", "--out", afile / "x.pt")
    assert code == EXIT_ERROR
    assert err.strip() == f"tokensmith export: error: {afile} is a file, not a folder: choose another --out"
    xl = Embedding("xl", {"clip_l": torch.ones(1, 768), "clip_g": torch.ones(1, 1280)})
    with pytest.raises(NotADirectoryError, match=f"{afile} is a file, not a folder"):
        export(xl, "diffusers", afile / "pair")  # the SDXL pair's folder, below the file
    assert afile.read_text() == "mine"


@pytest.mark.parametrize(("fmt", "suffix"), [("a1111-pt", ".pt"), ("canonical", ".safetensors")])
def test_export_to_a_path_ending_in_a_slash_names_a_file_inside_it(
    tmp_path, capsys, tokensmith_home, fmt, suffix
):
    """`--out exports/` is a folder, as for generate: not a file named `exports`."""
    Store.for_home(tokensmith_home).put(Embedding("cat", {"emb_params": torch.ones(1, 32)}))
    out = f"{tmp_path / 'exports'}/"
    code, _, err = run(capsys, "export", "cat", "--format", fmt, "--out", out)
    assert code == EXIT_ERROR and not (tmp_path / "exports").exists()
    assert (
        f"names a folder; give the file to write, e.g. --out {tmp_path / 'exports' / ('cat' + suffix)}" in err
    )


# --- 3. Ctrl-C stops the demo the same way in every phase ---


class FakeSession:
    """A Session that records the prompts it is given and draws plain orange squares, or raises
    KeyboardInterrupt (a Ctrl-C) for a prompt holding `stop_at`."""

    prompts: ClassVar[list[str]] = []
    stop_at: ClassVar[str | None] = None

    def __init__(self, model):
        pass

    def generate(self, request, *, store):
        FakeSession.prompts.append(request.prompt)
        if FakeSession.stop_at and FakeSession.stop_at in request.prompt:
            raise KeyboardInterrupt
        image = Image.new("RGB", (32, 32), (245, 140, 20))
        return [SimpleNamespace(image=image) for _ in range(request.num_images)]


@pytest.fixture
def fake_demo(monkeypatch):
    """The demo with its model, sampling and training faked (no model loads): training stores a token."""

    def trained(cfg, *, home, **kwargs):
        meta = {"steps": "2", "trainer": json.dumps({"trained_steps": 2})}
        token = Embedding(cfg.name, {"emb_params": torch.randn(2, 64) * 0.01}, meta=meta)
        Store.for_home(home).put(token, overwrite=True)
        return token

    monkeypatch.setattr(FakeSession, "prompts", [])
    monkeypatch.setattr(FakeSession, "stop_at", None)
    monkeypatch.setattr(studio.generation, "Session", FakeSession)
    monkeypatch.setattr(trainers.models, "load_model", lambda name: SimpleNamespace(family="demo"))
    monkeypatch.setattr(trainer_module, "train", trained)
    return FakeSession


def test_ctrl_c_before_training_exits_1_saying_to_run_it_again(tmp_path, monkeypatch, capsys, fake_demo):
    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainers.models, "load_model", interrupted)  # while the model loads
    code, out, err = run(capsys, "demo", "--out", tmp_path / "demo", "--json")
    assert (code, out) == (EXIT_ERROR, "")
    assert err.strip().splitlines()[-1] == STOPPED_TRAINING and "interrupted" not in err


def test_ctrl_c_while_rendering_exits_1_too(tmp_path, monkeypatch, capsys, fake_demo):
    import demo.world

    def interrupted(concept, rng, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo.world, "render", interrupted)
    code, _, err = run(capsys, "demo", "--out", tmp_path / "demo")
    assert code == EXIT_ERROR and err.strip() == STOPPED_TRAINING


def test_ctrl_c_after_storing_says_the_token_is_kept(tmp_path, capsys, fake_demo, tokensmith_home):
    fake_demo.stop_at = "<demo-purple-triangle>"  # sampling the `after` row
    code, out, err = run(capsys, "demo", "--out", tmp_path / "demo", "--json")
    stored = Store.for_home(tokensmith_home).path("demo-purple-triangle")
    assert (code, out) == (EXIT_ERROR, "") and stored.is_file()
    assert err.strip().splitlines()[-1] == (
        f"tokensmith demo: stopped after training: the token <demo-purple-triangle> is stored ({stored}) and "
        "prompts can use it; run `tokensmith demo` again for its samples and contact sheet"
    )
    fake_demo.stop_at = None  # and running it again works
    assert run(capsys, "demo", "--out", tmp_path / "demo")[0] == EXIT_OK
    assert (tmp_path / "demo" / "contact-sheet.png").is_file()


# --- 4. demo-images takes generate's --num-images ---


def test_demo_images_takes_num_images_and_still_num(tmp_path, capsys):
    for flag, folder in (("--num-images", "a"), ("--num", "b"), ("-n", "c")):
        code, _, _ = run(capsys, "demo-images", "red circle", flag, "2", "--out", tmp_path / folder)
        assert code == EXIT_OK and len(list((tmp_path / folder).glob("*.png"))) == 2
    code, _, err = run(capsys, "demo-images", "red circle", "--num-images", "0", "--out", tmp_path / "d")
    assert err.strip() == "tokensmith demo-images: error: --num-images must be 1 or more, not 0"


def test_demo_images_help_shows_num_images_as_generate_does(capsys):
    with pytest.raises(SystemExit):
        main(["demo-images", "--help"])
    text = capsys.readouterr().out
    assert "-n NUM_IMAGES, --num-images NUM_IMAGES" in " ".join(text.split()) and "--num " not in text
    assert "how many images (default 5)" in text


# --- 5. seeds: train's range, with one wording ---


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_demo_images_refuses_a_seed_out_of_range(tmp_path, capsys, seed):
    code, _, err = run(capsys, "demo-images", "red circle", "--seed", seed, "--out", tmp_path / "d")
    assert code == EXIT_ERROR
    assert err.strip().endswith(f"error: --seed must be between 0 and {MAX_SEED}, not {seed}")
    assert not (tmp_path / "d").exists()


def test_demo_images_takes_the_largest_seed(tmp_path, capsys):
    code, _, _ = run(capsys, "demo-images", "red circle", "-n", "1", "--seed", MAX_SEED, "--out", tmp_path)
    assert code == EXIT_OK


def test_demo_refuses_a_negative_seed_in_its_own_words(tmp_path, capsys):
    code, _, err = run(capsys, "demo", "--seed", "-1", "--out", tmp_path / "demo")
    assert code == EXIT_ERROR
    assert err.strip() == f"tokensmith demo: error: --seed must be between 0 and {MAX_SEED}, not -1"
    assert not (tmp_path / "demo").exists()


# --- 6. "an orange star" for people, "a orange star" for the model ---


def test_readable_puts_an_before_a_vowel_only():
    assert readable("a orange star") == "an orange star"
    assert readable("a small orange star on a blue background") == "a small orange star on a blue background"
    assert readable("a red circle") == "a red circle"


def test_demo_images_says_an_orange_star_and_keeps_the_file_names(tmp_path, capsys):
    code, out, err = run(capsys, "demo-images", "orange star", "-n", "1", "--out", tmp_path / "s")
    assert code == EXIT_OK and "wrote 1 image of 'an orange star' (held out" in err
    code, out, _ = run(capsys, "demo-images", "orange star", "-n", "1", "--out", tmp_path / "j", "--json")
    report = json.loads(out)
    assert report["concept"] == "an orange star"
    assert [p.name for p in (tmp_path / "j").glob("*.png")] == ["orange-star-000.png"]


def test_demo_says_an_orange_star_but_prompts_the_model_as_trained(tmp_path, capsys, fake_demo):
    code, out, err = run(capsys, "demo", "--concept", "orange star", "--out", tmp_path / "demo", "--json")
    assert code == EXIT_OK
    assert "rendered 5 images of 'an orange star'" in err
    assert "concept        an orange star (never seen by the demo model)" in err
    assert json.loads(out)["concept"] == "an orange star"
    assert fake_demo.prompts == [
        "a red circle",  # `before`: the init words
        "a <demo-orange-star>",
        "a <slerp(<demo-orange-star>, blue, 0.5)>",
    ]
