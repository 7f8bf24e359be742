"""Training data, continued: template files refused before a run folder, captions cut after the token,
images kept only as large as their crops need, the subfolder hint, colour profiles, panorama buckets, random
crops without room to move, and the smaller notes (subfolders beside images, empty and .caption captions,
broken caption links, empty files, huge photos)."""

import io
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from tinyrun import quick_config, square_images, tiny_model

from embeddings.errors import TokensmithError
from trainers import TrainConfig, train
from trainers.config import ConfigError
from trainers.data import (
    DataError,
    bucket_for,
    build_samples,
    fit_for_training,
    load_images,
    template_set,
)
from trainers.datanotes import data_notes
from trainers.pictures import PictureError, read_picture


def _save(path, size=(32, 32), colour=(200, 30, 40)):
    Image.new("RGB", size, colour).save(path)
    return path


def _gradient(size: tuple[int, int]) -> Image.Image:
    """Every pixel differs, so a resize or a crop shows in the samples' pixels."""
    width, height = size
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(
        np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
    )


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
    _gradient((200, 100)).save(tmp_path / "wide.png")
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
    _gradient((64, 40)).save(tmp_path / "a.png")
    image = _gradient((40, 40)).convert("RGBA")
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
        _gradient((300 + i, 200)).save(images / f"{i}.png")
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


# --- the subfolder hint (finding 5) and subfolders beside images ---


def test_the_subfolder_hint_skips_macos_forks_and_names_the_fullest_folder(tmp_path):
    for sub, count in (("__MACOSX", 0), ("a-few", 1), ("shots", 3)):
        (tmp_path / sub).mkdir()
        for i in range(count):
            _save(tmp_path / sub / f"{i}.png")
    for folder in (tmp_path / "__MACOSX", tmp_path / "a-few"):
        for i in range(4):  # AppleDouble forks: hidden files, no images
            (folder / f"._{i}.png").write_bytes(b"\x00\x05\x16\x07junk")
    with pytest.raises(DataError) as caught:
        load_images(tmp_path)
    said = str(caught.value)
    assert "its subfolders shots/, a-few/ hold images" in said and "__MACOSX" not in said
    assert f"(--images {tmp_path / 'shots'})" in said


def test_images_in_subfolders_beside_the_images_get_a_note(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    _save(tmp_path / "sub" / "s.png")
    _save(tmp_path / "sub" / "t.png")
    notes = data_notes(tmp_path, load_images(tmp_path), "object")
    assert notes[1] == (
        f"2 image(s) in the subfolders sub/ are not trained on (subfolders are not searched); move them up "
        f"into {tmp_path} to train on them"
    )


# --- colour profiles (finding 6) ---


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _adobe_rgb_like_profile() -> bytes:
    """A small ICC v2 matrix profile with Adobe RGB (1998)'s primaries and gamma 2.2 (Pillow writes none)."""

    def xyz(x, y, z):
        return b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)

    def curve(gamma):
        return b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"

    name = b"AdobeRGB-like\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(name)) + name + b"\0" * 78
    tags = [
        (b"desc", desc),
        (b"cprt", b"text" + b"\0" * 4 + b"none\0"),
        (b"wtpt", xyz(0.9642, 1.0, 0.82491)),
        (b"rXYZ", xyz(0.60974, 0.31111, 0.01947)),
        (b"gXYZ", xyz(0.20528, 0.62567, 0.06087)),
        (b"bXYZ", xyz(0.14919, 0.06322, 0.74457)),
        *((sig, curve(2.19921875)) for sig in (b"rTRC", b"gTRC", b"bTRC")),
    ]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        data += b"\0" * (-(offset + len(data)) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    body = struct.pack(">I", len(tags)) + table + data
    header = (
        struct.pack(">I", 128 + len(body))
        + b"lcms"
        + bytes([2, 0x10, 0, 0])
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acspAPPL"
        + b"\0" * 24
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + b"\0" * 48
    )
    return header + body


def test_an_embedded_colour_profile_is_applied_and_alpha_kept(tmp_path):
    icc = _adobe_rgb_like_profile()
    Image.new("RGB", (8, 8), (60, 170, 80)).save(tmp_path / "adobe.png", icc_profile=icc)
    Image.new("RGB", (8, 8), (60, 170, 80)).save(tmp_path / "adobe.jpg", icc_profile=icc, quality=100)
    Image.new("RGBA", (8, 8), (60, 170, 80, 100)).save(tmp_path / "cut.png", icc_profile=icc)
    shown = np.array([0, 172, 72])  # what a colour-managed viewer (LittleCMS into sRGB) shows
    assert np.abs(np.array(read_picture(tmp_path / "adobe.png").getpixel((3, 3))) - shown).max() <= 1
    assert np.abs(np.array(read_picture(tmp_path / "adobe.jpg").getpixel((3, 3))) - shown).max() <= 2
    cut = read_picture(tmp_path / "cut.png", alpha=True)
    assert cut.mode == "RGBA" and cut.getpixel((3, 3))[3] == 100
    assert np.abs(np.array(cut.getpixel((3, 3))[:3]) - shown).max() <= 1
    Image.new("RGB", (8, 8), (60, 170, 80)).save(tmp_path / "plain.png")  # no profile: pixels as stored
    assert read_picture(tmp_path / "plain.png").getpixel((3, 3)) == (60, 170, 80)


def test_a_broken_colour_profile_leaves_the_pixels_as_stored(tmp_path):
    Image.new("RGB", (8, 8), (60, 170, 80)).save(tmp_path / "odd.png", icc_profile=b"not a profile" * 20)
    assert read_picture(tmp_path / "odd.png").getpixel((3, 3)) == (60, 170, 80)


# --- panorama buckets (finding 7) and random crops without room to move (finding 8) ---


def test_bucket_aspect_is_capped_and_a_panorama_is_cropped_at_the_centre(tmp_path):
    assert bucket_for((16, 4000), 512, 64) == (256, 1024)  # 1:4, not (64, 8064)
    assert bucket_for((10000, 100), 1024, 128) == (2048, 512)
    assert bucket_for((300, 100), 32, 8) == (56, 16)  # 3:1 is within the cap: as before
    strip = Image.new("RGB", (800, 40), (0, 0, 255))
    strip.paste((255, 0, 0), (380, 0, 420, 40))  # a red mark at the centre
    strip.save(tmp_path / "pano.png")
    _save(tmp_path / "square.png")
    images = load_images(tmp_path)
    (sample, _) = build_samples(
        images, resolution=32, crop="bucket", flip=False, alpha_weight=False, multiple=8, seed=0
    )
    assert sample.bucket == (64, 16) and sample.time_ids == (40, 800, 0, 128, 16, 64)
    assert sample.pixels[0, 8, 32] > 0.9 and sample.pixels[2, 8, 2] > 0.9  # the centre mark, blue around it
    notes = data_notes(tmp_path, images, "object", crop="bucket")
    assert notes[1] == (
        "1 image(s) are wider or taller than 4:1 (pano.png): their buckets are 4:1 (or 1:4), and the image "
        "is cropped to it at the centre"
    )
    assert data_notes(tmp_path, images, "object", crop="center")[1:] == []


def test_random_crops_of_an_image_without_room_to_move_are_encoded_once_and_drawn_as_often(tmp_path):
    from trainers.latents import encode_samples
    from trainers.tiny import tiny_pipeline

    _save(tmp_path / "square.png")
    _gradient((48, 32)).save(tmp_path / "wide.png")
    samples = build_samples(
        load_images(tmp_path), resolution=16, crop="random", flip=True, alpha_weight=False, multiple=8, seed=0
    )
    square = [s for s in samples if s.image_index == 0]
    assert len(square) == 8 and len({id(s) for s in square}) == 2  # one crop and its mirror, listed 4 times
    assert len({id(s) for s in samples if s.image_index == 1}) == 8  # the wide one moves: 4 crops, 4 mirrors
    vae = tiny_pipeline("sd1").vae
    encoded = []
    real = vae.encode
    vae.encode = lambda pixels: encoded.append(len(pixels)) or real(pixels)
    cache = encode_samples(vae, samples)
    assert sum(encoded) == 10  # each distinct sample once
    first = samples.index(square[0])
    repeats = [i for i, s in enumerate(samples) if s is square[0]]
    assert all(torch.equal(cache.means[i], cache.means[first]) for i in repeats)


# --- the smaller notes and errors ---


def test_an_empty_caption_is_called_empty_not_missing(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _save(tmp_path / name)
    (tmp_path / "a.txt").write_text("on a sofa")
    (tmp_path / "b.txt").write_text("  \n")
    notes = data_notes(tmp_path, load_images(tmp_path), "captions")
    assert notes[1] == (
        "1 of 3 images have no NAME.txt caption (c.png), 1 an empty one (b.txt): [filewords] stays empty in "
        "their prompts"
    )
    (tmp_path / "c.txt").write_text("")
    notes = data_notes(tmp_path, load_images(tmp_path), "captions")
    assert notes[1] == (
        "2 of 3 images have an empty NAME.txt caption (b.txt, c.txt): [filewords] stays empty in their "
        "prompts"
    )
    (tmp_path / "a.txt").write_text("")
    notes = data_notes(tmp_path, load_images(tmp_path), "captions")
    assert "has a NAME.txt caption (a.txt, b.txt, c.txt are empty), so it stays empty" in notes[1]


def test_a_broken_caption_link_is_an_error_like_a_broken_image_link(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "a.txt").symlink_to(tmp_path / "moved-away.txt")
    with pytest.raises(
        DataError, match=r"caption .*a\.txt is a broken link: .*moved-away\.txt does not exist"
    ):
        load_images(tmp_path)


def test_caption_files_that_are_not_read_get_a_note(tmp_path):
    for name in ("a.png", "b.png"):
        _save(tmp_path / name)
        (tmp_path / name).with_suffix(".caption").write_text("a blip caption")
    notes = data_notes(tmp_path, load_images(tmp_path), "object")
    assert notes[1] == (
        "found 2 .caption file(s) (a.caption, b.caption), but only NAME.txt captions are read; rename them "
        "to NAME.txt to train with them"
    )


def test_an_empty_image_file_says_it_is_empty(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"image .*a\.png is empty \(0 bytes\): give a PNG or JPEG file"):
        load_images(tmp_path)
    with pytest.raises(PictureError, match=r"init image 'up\.png' is empty \(0 bytes\)"):
        read_picture(b"", name="up.png", role="init image")


def test_a_huge_photo_is_read_without_pils_warning_and_named_in_a_note(tmp_path, monkeypatch):
    square_images(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 16x16 = 256 px: past the warning, not the refusal
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning named no file
        images = load_images(tmp_path)
    notes = data_notes(tmp_path, images, "object")
    assert notes[1] == (
        "0.png (256 pixels), 1.png (256 pixels), 2.png (256 pixels): larger than 200 pixels; read, then kept "
        "downscaled to what training needs (a copy a few thousand pixels a side loads faster)"
    )
    assert read_picture(io.BytesIO((tmp_path / "0.png").read_bytes()).getvalue(), name="0.png").size == (
        16,
        16,
    )
