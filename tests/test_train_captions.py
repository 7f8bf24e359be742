"""Captions: NAME.txt files join the object and style prompts, are found whatever the case of their name,
and the notes before training say what the templates make of them."""

import pytest
from PIL import Image

from trainers.data import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    DataError,
    fill_template,
    load_images,
    template_set,
)
from trainers.datanotes import data_notes


def _save(path, size=(32, 32)):
    Image.new("RGB", size, (200, 30, 40)).save(path)
    return path


@pytest.mark.parametrize(
    ("templates", "first"),
    [("object", "a <cat>, on a red sofa"), ("style", "a painting in the style of <cat>, on a red sofa")],
)
def test_object_and_style_prompts_gain_the_caption_where_there_is_one(templates, first):
    prompts = {fill_template(t, "<cat>", "on a red sofa") for t in template_set(templates)}
    assert all(prompt.endswith("<cat>, on a red sofa") for prompt in prompts)
    family = template_set(templates, family_object_templates=("a [name]",))  # the demo world's prefixes
    assert fill_template(family[0], "<cat>", "on a red sofa") == first


@pytest.mark.parametrize(("templates", "paper"), [("object", OBJECT_TEMPLATES), ("style", STYLE_TEMPLATES)])
def test_an_image_without_a_caption_keeps_the_papers_own_prompts(templates, paper):
    """Runs without captions (and their resumes) see exactly the prompts they saw before captions joined."""
    filled = [fill_template(t, "<cat> <cat>_1", "") for t in template_set(templates)]
    assert filled == [fill_template(t, "<cat> <cat>_1", "") for t in paper]
    family = template_set("object", family_object_templates=("a [name]",))  # the demo world's own
    assert [fill_template(t, "<x>", "") for t in family] == ["a <x>"]


def test_captions_are_found_whatever_the_case_of_their_name(tmp_path):
    for name in ("IMG_1.JPG", "IMG_2.jpg", "ok3.png"):
        _save(tmp_path / name)
    (tmp_path / "IMG_1.TXT").write_text("upper")
    (tmp_path / "IMG_2.txt").write_text("lower")
    (tmp_path / "OK3.Txt").write_text("copied from Windows")
    assert [i.caption for i in load_images(tmp_path)] == ["upper", "lower", "copied from Windows"]


def test_the_exact_caption_name_wins_and_two_others_are_an_error(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("exact")
    (tmp_path / "A.TXT").write_text("other")
    assert load_images(tmp_path)[0].caption == "exact"
    (tmp_path / "a.txt").unlink()
    (tmp_path / "a.TXT").write_text("third")
    with pytest.raises(DataError, match=r"A\.TXT and a\.TXT both caption a\.png; keep one"):
        load_images(tmp_path)


def test_the_notes_count_the_images_and_name_the_skipped_files(tmp_path):
    _save(tmp_path / "ok0.png")
    _save(tmp_path / "ok1.png")
    (tmp_path / "ok0.txt").write_text("a shiny thing")
    for name in ("a.gif", "b.BMP"):
        (tmp_path / name).write_bytes(b"GIF89a")
    (found,) = data_notes(tmp_path, load_images(tmp_path), "object")
    assert found == (
        f"training on 2 image(s) from {tmp_path} (1 with NAME.txt captions); skipped a.gif, b.BMP: only "
        "PNG/JPEG/WebP are read, convert them to PNG to use them"
    )


def test_a_template_file_without_filewords_says_the_captions_are_not_used(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _save(images / "a.png")
    (images / "a.txt").write_text("on a sofa")
    plain = tmp_path / "plain.txt"
    plain.write_text("a photo of [name]\n")
    notes = data_notes(images, load_images(images), str(plain))
    assert notes[1].startswith(f"1 of 1 images have NAME.txt captions, but the templates in {plain} have no ")
    assert "add [filewords] to the template lines" in notes[1]


def test_filewords_without_any_caption_is_noted_and_missing_ones_are_named(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _save(tmp_path / name)
    notes = data_notes(tmp_path, load_images(tmp_path), "captions")
    assert "the templates use [filewords] but no image in" in notes[1]
    (tmp_path / "a.txt").write_text("on a sofa")
    notes = data_notes(tmp_path, load_images(tmp_path), "captions")
    assert (
        notes[1]
        == "2 of 3 images have no NAME.txt caption (b.png, c.png): [filewords] stays empty in their prompts"
    )
    assert data_notes(tmp_path, load_images(tmp_path), "object")[1:] == []  # object prompts just gain it
