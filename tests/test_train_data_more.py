"""Training data, continued: template files refused before a run folder, captions cut after the token, and
images kept only as large as their crops need (what else a folder holds: test_train_folder_images)."""

import numpy as np
import pytest
import torch
from imagefiles import gradient
from PIL import Image
from tinyrun import quick_config, square_images, tiny_model

from embeddings.errors import TokensmithError
from trainers import TrainConfig, train
from trainers.config import ConfigError
from trainers.data import DataError, fit_for_training, load_images, template_set
from trainers.samples import build_samples

# --- a template file is read before the run folder is made (finding 2) ---


def test_a_bad_template_file_is_refused_with_its_line_before_a_run_folder_is_made(tmp_path):
    images = square_images(tmp_path / "images")
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of [name]\nno token here\n")
    cfg = quick_config(images, tmp_path / "run", templates=str(bad))
    with pytest.raises(DataError, match=r"bad\.txt: line 2 'no token here' has no \[name\]; every line must"):
        train(cfg, home=tmp_path / "home", model=tiny_model("sd1"))
    assert not (tmp_path / "run").exists()  # no "crashed" run whose --resume would want the bad file back


def test_a_missing_template_file_is_refused_before_a_run_folder_is_made(tmp_path):
    images = square_images(tmp_path / "images")
    cfg = quick_config(images, tmp_path / "run", templates=str(tmp_path / "nothere.txt"))
    with pytest.raises(DataError, match=r"template file .*nothere\.txt does not exist"):
        train(cfg, home=tmp_path / "home", model=tiny_model("sd1"))
    assert not (tmp_path / "run").exists()


def test_template_lines_are_counted_as_the_file_numbers_them(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a [name]\n\n  \nthe thing\n")
    with pytest.raises(DataError, match=r"line 4 'the thing' has no \[name\]"):
        template_set(str(path))
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"t\.txt is empty; write one prompt per line"):
        template_set(str(path))


def test_a_template_file_with_a_capital_suffix_is_accepted(tmp_path):
    path = tmp_path / "MY.TXT"
    path.write_text("a photo of [name]\n")
    assert TrainConfig(templates=str(path)).templates == str(path)
    assert template_set(str(path)) == ("a photo of [name]",)
    with pytest.raises(ConfigError, match=r"a path to a \.txt template file"):
        TrainConfig(templates="mine.csv")


# --- captions too long for the text encoder (finding 3) ---


def test_a_caption_cut_after_the_token_trains_with_one_note(tmp_path):
    images = square_images(tmp_path / "images")
    for i in range(3):  # the tiny tokenizer reads 16 tokens: each prompt is cut in its caption
        (images / f"{i}.txt").write_text(f"a very fluffy ginger cat number {i} on a comfortable sofa")
    said = []
    cfg = quick_config(images, tmp_path / "run", templates="captions", vectors=2, steps=1)
    emb = train(cfg, home=tmp_path / "home", model=tiny_model("sd1"), echo=said.append)
    assert emb.meta["steps"] == "1"
    notes = [line for line in said if "training prompts are longer than" in line]
    assert notes == [
        "note: 3 of 3 training prompts are longer than the 16 tokens this model reads (the longest, "
        "'<thing>, a very fluffy ginger cat number 0 on a comfortable sofa', is 45): they are cut at the "
        "end, after the token, so only their captions' last words are not trained on"
    ]


def test_a_caption_before_the_token_that_would_push_it_out_is_refused(tmp_path):
    images = square_images(tmp_path / "images")
    (images / "0.txt").write_text("a very fluffy ginger cat on a comfortable sofa in the room")
    late = tmp_path / "late.txt"
    late.write_text("[filewords], a photo of [name]\n")  # the caption comes first: the token is cut
    cfg = quick_config(images, tmp_path / "run", templates=str(late), vectors=1)
    with pytest.raises(TokensmithError) as caught:
        train(cfg, home=tmp_path / "home", model=tiny_model("sd1"))
    said = str(caught.value)
    assert said.startswith(
        "the training prompt 'a very fluffy ginger cat on a comfortable sofa in the room, "
    )
    assert (
        "more than the 16 this model reads; use shorter captions or templates (or put [name] before" in said
    )


def test_a_token_past_the_cut_in_a_long_template_names_how_far_it_reaches(tmp_path):
    images = square_images(tmp_path / "images")
    long = tmp_path / "long.txt"
    long.write_text("a b c d e f g h i j k l m n [name] o p q\n")  # the token at tokens 16-17 of 16
    cfg = quick_config(images, tmp_path / "run", templates=str(long), vectors=2)
    with pytest.raises(TokensmithError) as caught:
        train(cfg, home=tmp_path / "home", model=tiny_model("sd1"))
    assert str(caught.value) == (
        "the training prompt 'a b c d e f g h i j k l m n <thing> o p q' is 21 tokens with 2 vectors, more "
        "than the 16 this model reads (18 up to the end of its token); use shorter captions or templates"
    )


# --- images kept only as large as their crops need (finding 4) ---


def test_images_are_kept_downscaled_with_their_own_size_for_sdxl(tmp_path):
    gradient((200, 100)).save(tmp_path / "wide.png")
    (loaded,) = load_images(tmp_path)
    (kept,) = fit_for_training([loaded], resolution=16)
    assert kept.image.size == (64, 32) and kept.size == (200, 100)  # shorter side at 2 x 16, aspect kept
    (read_fitted,) = load_images(tmp_path, fit_to=16)  # as train reads them: fitted as each is read
    assert read_fitted.image.tobytes() == kept.image.tobytes() and read_fitted.size == (200, 100)
    for crop in ("center", "random", "bucket"):
        samples = build_samples(
            [kept], resolution=16, crop=crop, flip=True, alpha_weight=False, multiple=8, seed=0
        )
        assert {s.time_ids[:2] for s in samples} == {(100, 200)}  # the file's own size, not the kept one
        full = build_samples(
            [loaded], resolution=16, crop=crop, flip=True, alpha_weight=False, multiple=8, seed=0
        )
        assert [(s.bucket, s.time_ids) for s in samples] == [(s.bucket, s.time_ids) for s in full]
        assert all(
            float((a.pixels - b.pixels).abs().mean()) < 0.02 for a, b in zip(samples, full, strict=True)
        )


def test_images_already_small_enough_give_the_same_samples(tmp_path):
    gradient((64, 40)).save(tmp_path / "a.png")
    image = gradient((40, 40)).convert("RGBA")
    image.putalpha(Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1))))
    image.save(tmp_path / "b.png")
    loaded = load_images(tmp_path)
    kept = fit_for_training(loaded, resolution=20)  # shorter sides 40: at most 2 x 20, kept as they are
    assert all(a is b for a, b in zip(kept, loaded, strict=True))
    for crop in ("center", "random", "bucket"):
        kwargs = dict(resolution=20, crop=crop, flip=True, alpha_weight=True, multiple=4, seed=2)
        for a, b in zip(build_samples(kept, **kwargs), build_samples(loaded, **kwargs), strict=True):
            assert torch.equal(a.pixels, b.pixels) and torch.equal(a.weight, b.weight)
            assert a.time_ids == b.time_ids


def test_a_kept_rgba_image_keeps_its_alpha(tmp_path):
    image = Image.new("RGBA", (120, 90), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, 60, 90))
    image.save(tmp_path / "cut.png")
    (kept,) = fit_for_training(load_images(tmp_path), resolution=16)
    assert kept.image.mode == "RGBA" and kept.image.size == (43, 32)
    assert kept.image.getpixel((2, 16)) == (0, 0, 255, 255) and kept.image.getpixel((40, 16))[3] == 0


def test_a_run_holds_its_photos_downscaled(tmp_path, monkeypatch):
    from trainers import steps as steps_module

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        gradient((300 + i, 200)).save(images / f"{i}.png")
    seen = []
    build = steps_module.build_samples
    monkeypatch.setattr(
        steps_module, "build_samples", lambda images, **kw: seen.append(images) or build(images, **kw)
    )
    train(quick_config(images, tmp_path / "run", steps=1), home=tmp_path / "home", model=tiny_model("sd1"))
    (trained,) = seen
    assert [item.image.size for item in trained] == [(48, 32), (48, 32)]  # the tiny model trains at 16 px
    assert [item.size for item in trained] == [(300, 200), (301, 200)]


def test_the_kept_size_is_read_before_the_model_loads(tmp_path):
    from trainers.tiny import tiny_pipeline
    from trainers.trainer import largest_resolution

    assert largest_resolution(TrainConfig(), None) == 32  # the demo world's own
    assert largest_resolution(TrainConfig(resolution=64), None) == 64
    assert largest_resolution(TrainConfig(), tiny_model("sd1")) == 16
    tiny_pipeline("sd1").save_pretrained(tmp_path / "tiny")
    assert largest_resolution(TrainConfig(model=str(tmp_path / "tiny")), None) == 16
    assert largest_resolution(TrainConfig(model="owner/some-model"), None) == 1024  # only loading tells
