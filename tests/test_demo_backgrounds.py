"""The demo world's backgrounds: a background that varies across the training images is named in their
captions, as the world's own captions name it; one shared background, and every real model, is left alone."""

import random

import pytest
from PIL import Image
from tinyrun import quick_config, tiny_model

from demo.world import Concept, render
from trainers import steps as steps_module
from trainers import train
from trainers.data import load_images
from trainers.datanotes import data_notes
from trainers.worldcaptions import world_captions


def _renders(folder, backgrounds, *, concept="cross", colour="green"):
    """One render of the concept per background, saved as img0.png, img1.png, ... in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i, background in enumerate(backgrounds):
        render(Concept(concept, colour, background, "medium"), rng).save(folder / f"img{i}.png")
    return folder


def test_varied_backgrounds_are_captioned_in_the_worlds_words(tmp_path):
    folder = _renders(tmp_path, ["gray", "blue", "white", "blue"])
    assert world_captions(load_images(folder)) == [
        "",  # gray: the world's captions leave the default out
        "on a blue background",
        "on a white background",
        "on a blue background",
    ]


def test_a_name_txt_caption_wins_over_the_judged_background(tmp_path):
    folder = _renders(tmp_path, ["gray", "blue", "yellow"])
    (folder / "img1.txt").write_text("on a dark blue background")
    assert world_captions(load_images(folder)) == ["", "on a dark blue background", "on a yellow background"]


@pytest.mark.parametrize("backgrounds", [["gray"] * 3, ["blue"] * 3])
def test_one_shared_background_leaves_the_captions_as_they_are(tmp_path, backgrounds):
    """A gray set trains exactly as before; one shared colour may be part of the concept."""
    folder = _renders(tmp_path, backgrounds)
    (folder / "img2.txt").write_text("a caption of its own")
    images = load_images(folder)
    assert world_captions(images) == [image.caption for image in images] == ["", "", "a caption of its own"]


def test_a_transparent_cut_out_counts_as_the_gray_it_is_trained_on(tmp_path):
    folder = _renders(tmp_path, ["gray", "gray"])
    cut_out = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # black where transparent, gray once composited
    cut_out.paste((40, 170, 50, 255), (10, 10, 22, 22))
    cut_out.save(folder / "img2.png")
    assert world_captions(load_images(folder)) == ["", "", ""]


def test_the_notes_say_so_on_the_demo_world_only(tmp_path):
    folder = _renders(tmp_path / "images", ["gray", "blue", "white"])
    images = load_images(folder)
    notes = data_notes(folder, images, "object", demo_world=True)
    assert notes[1:] == [
        "the backgrounds vary (gray, blue, white): 2 image(s) without a NAME.txt caption are captioned with "
        "their background (on a blue background, on a white background; gray is left unsaid, as in the "
        "world's own captions); write NAME.txt captions to choose otherwise"
    ]
    assert data_notes(folder, images, "object")[1:] == []  # a real model: nothing is added
    (folder / "img1.txt").write_text("on a blue background")
    notes = data_notes(folder, load_images(folder), "object", demo_world=True)
    assert "(gray, blue, white): 1 image(s) without a NAME.txt caption are captioned" in notes[1]
    (folder / "img2.txt").write_text("on a white background")  # the gray one gets nothing: no note
    assert data_notes(folder, load_images(folder), "object", demo_world=True)[1:] == []
    plain = tmp_path / "plain.txt"
    plain.write_text("a photo of [name]\n")  # no [filewords]: no caption reaches a prompt
    assert not any("backgrounds vary" in n for n in data_notes(folder, images, str(plain), demo_world=True))
    gray = _renders(tmp_path / "gray", ["gray"] * 3)
    assert data_notes(gray, load_images(gray), "object", demo_world=True)[1:] == []


def _trained_captions(monkeypatch, tmp_path, folder, family):
    """The captions a run on a tiny model of `family` trains with (what Steps.prepare hands its prompts)."""
    seen = []  # the tiny tokenizer reads 16 tokens: its prompts' length is not what is checked here
    monkeypatch.setattr(
        steps_module, "check_prompt_length", lambda _c, _t, captions, _cfg: seen.append(captions)
    )
    run = f"{family}-{folder.name}"
    cfg = quick_config(folder, tmp_path / run, steps=1, refine_latents=0)
    train(cfg, home=tmp_path / f"home-{run}", model=tiny_model_of(family))
    return seen[0]


def tiny_model_of(family):
    """The tiny sd1 pipeline, trained as `family` (the demo world's spec: its templates and captions)."""
    model = tiny_model("sd1")
    return type(model)(pipe=model.pipe, family=family, source=model.source)


def test_a_demo_world_run_trains_with_the_background_captions_and_a_gray_run_as_before(monkeypatch, tmp_path):
    varied = _renders(tmp_path / "varied", ["gray", "blue", "white"])
    assert _trained_captions(monkeypatch, tmp_path, varied, "demo") == [
        "",
        "on a blue background",
        "on a white background",
    ]
    assert _trained_captions(monkeypatch, tmp_path, varied, "w32") == ["", "", ""]  # not the demo world
    gray = _renders(tmp_path / "gray", ["gray"] * 3)
    assert _trained_captions(monkeypatch, tmp_path, gray, "demo") == ["", "", ""]
