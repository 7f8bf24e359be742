"""trainers/pictures.py: pictures read as a viewer shows them (upright, 8-bit), and every failure named."""

import io

import numpy as np
import pytest
from PIL import Image

from trainers.data import load_images
from trainers.pictures import PictureError, read_picture


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sideways() -> Image.Image:
    """Stored wide (red left, blue right) with EXIF orientation 6: a viewer shows it tall, red on top."""
    stored = np.zeros((8, 16, 3), dtype=np.uint8)
    stored[:, :8, 0], stored[:, 8:, 2] = 255, 255
    return Image.fromarray(stored)


def orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


# --- pixels as a viewer shows them ---


def test_sixteen_bit_gray_is_scaled_to_eight_bit_not_clipped_to_white(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(np.full((4, 4), 20000, dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    image = read_picture(path)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (78, 78, 78)  # 20000 / 257, not 255


def test_thirty_two_bit_and_float_gray_are_scaled_too(tmp_path):
    int_path, float_path = tmp_path / "int.tiff", tmp_path / "float.tiff"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.int32), mode="I").save(int_path)
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F").save(float_path)
    assert read_picture(int_path).getpixel((0, 0)) == (255, 255, 255)
    assert read_picture(float_path).getpixel((0, 0)) == (128, 128, 128)  # floats in 0..1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(fmt):
    image = read_picture(encoded(sideways(), fmt, exif=orientation(6)), name=f"rot.{fmt.lower()}")
    assert image.size == (8, 16)
    top, bottom = image.getpixel((4, 2)), image.getpixel((4, 13))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red on top, blue below


def test_alpha_is_kept_only_when_asked_and_only_when_there_is_some():
    rgba = encoded(Image.new("RGBA", (4, 4), (255, 0, 0, 128)))
    assert read_picture(rgba).mode == "RGB"
    assert read_picture(rgba, alpha=True).getpixel((0, 0)) == (255, 0, 0, 128)
    assert read_picture(encoded(Image.new("LA", (4, 4), (90, 10))), alpha=True).mode == "RGBA"
    palette = Image.new("P", (4, 4), 0)  # colour 0 marked transparent
    assert read_picture(encoded(palette, transparency=0), alpha=True).getpixel((0, 0))[3] == 0
    assert read_picture(encoded(Image.new("RGB", (4, 4))), alpha=True).mode == "RGB"


def test_the_trainer_reads_the_same_pixels(tmp_path):
    # a superset of trainers/data.py's reading: with alpha=True, what it trains on, pixel for pixel and mode
    Image.fromarray(np.full((20, 20), 20000, dtype=np.uint16)).save(tmp_path / "a-gray16.png")
    sideways().resize((32, 16)).save(tmp_path / "b-rot.jpg", exif=orientation(6))
    Image.new("RGBA", (20, 20), (0, 255, 0, 100)).save(tmp_path / "c-alpha.png")
    Image.new("P", (20, 20), 3).save(tmp_path / "d-palette.png", transparency=0)
    Image.new("L", (20, 20), 77).save(tmp_path / "e-gray.png")
    for trained in load_images(tmp_path):
        ours = read_picture(trained.path, alpha=True)
        assert ours.mode == trained.image.mode, trained.path.name
        assert np.array_equal(np.asarray(ours), np.asarray(trained.image)), trained.path.name


# --- what cannot be read, named with what to do ---


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(PictureError, match=r"init image .*nope.png does not exist"):
        read_picture(tmp_path / "nope.png", role="init image")
    with pytest.raises(PictureError, match=r"is a folder: give an image file"):
        read_picture(tmp_path)


def test_a_file_that_is_not_an_image_names_the_upload_not_a_buffer():
    with pytest.raises(PictureError, match=r"cannot read image 'notes.png': it is not an image") as info:
        read_picture(b"hello", name="notes.png")
    assert "_io." not in str(info.value)


def test_a_truncated_image_asks_whether_the_file_is_complete(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(encoded(Image.new("RGB", (64, 64), (1, 2, 3)))[:60])
    with pytest.raises(PictureError, match=r"cannot read image .*cut.png \(.*\): is the file complete"):
        read_picture(path)


def test_a_decompression_bomb_is_named_with_its_size_and_what_to_do(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (3000, 2000)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)  # PIL refuses above twice this: 4 Mpx
    with pytest.raises(
        PictureError,
        match=r"image .*bomb.png is too large \(6 megapixels, more than the 4 .*\); downscale it",
    ):
        read_picture(path)
    with pytest.raises(PictureError, match=r"init image 'big.png' is too large \(6 megapixels"):
        read_picture(path.read_bytes(), name="big.png", role="init image")
