"""What a folder of training images holds, past the images themselves: subfolders, colour profiles,
panoramas and square images under random crops, empty or broken captions, ignored files and huge photos."""

import io
import struct
import warnings

import numpy as np
import pytest
import torch
from imagefiles import gradient, save_plain
from PIL import Image
from tinyrun import square_images

from trainers.data import DataError, load_images
from trainers.datanotes import data_notes
from trainers.pictures import PictureError, read_picture
from trainers.samples import bucket_for, build_samples

# --- the subfolder hint (finding 5) and subfolders beside images ---


def test_the_subfolder_hint_skips_macos_forks_and_names_the_fullest_folder(tmp_path):
    for sub, count in (("__MACOSX", 0), ("a-few", 1), ("shots", 3)):
        (tmp_path / sub).mkdir()
        for i in range(count):
            save_plain(tmp_path / sub / f"{i}.png")
    for folder in (tmp_path / "__MACOSX", tmp_path / "a-few"):
        for i in range(4):  # AppleDouble forks: hidden files, no images
            (folder / f"._{i}.png").write_bytes(b"\x00\x05\x16\x07junk")
    with pytest.raises(DataError) as caught:
        load_images(tmp_path)
    said = str(caught.value)
    assert "its subfolders shots/, a-few/ hold images" in said and "__MACOSX" not in said
    assert f"(--images {tmp_path / 'shots'})" in said


def test_images_in_subfolders_beside_the_images_get_a_note(tmp_path):
    save_plain(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    save_plain(tmp_path / "sub" / "s.png")
    save_plain(tmp_path / "sub" / "t.png")
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
    save_plain(tmp_path / "square.png")
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

    save_plain(tmp_path / "square.png")
    gradient((48, 32)).save(tmp_path / "wide.png")
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
        save_plain(tmp_path / name)
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
    save_plain(tmp_path / "a.png")
    (tmp_path / "a.txt").symlink_to(tmp_path / "moved-away.txt")
    with pytest.raises(
        DataError, match=r"caption .*a\.txt is a broken link: .*moved-away\.txt does not exist"
    ):
        load_images(tmp_path)


def test_caption_files_that_are_not_read_get_a_note(tmp_path):
    for name in ("a.png", "b.png"):
        save_plain(tmp_path / name)
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
