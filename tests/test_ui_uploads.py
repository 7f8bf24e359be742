"""Training-image checks of the studio (studio/app/uploads.py): every bad file is named with what to do."""

import io

import numpy as np
import pytest
from PIL import Image

from studio.app import uploads


def png(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_good_images_get_safe_numbered_names():
    images = uploads.check_images([("My Cat (1).PNG", png()), ("../evil.jpg", png((80, 40)))])
    assert [i.name for i in images] == ["000-My-Cat-1.png", "001-evil.jpg"]
    assert images[1].size == (80, 40)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("notes.txt", b"hello", "'notes.txt' is not a PNG, JPEG or WebP image"),
        ("broken.png", png()[:40], "'broken.png' could not be read as an image"),
        ("tiny.png", png((16, 16)), "only 16×16 pixels"),
        ("huge.png", b"x" * (uploads.MAX_FILE_BYTES + 1), "over the 25 MB limit"),
    ],
)
def test_bad_files_are_named_with_the_problem(name, data, message):
    with pytest.raises(ValueError, match=message):
        uploads.check_image(name, data)


def test_too_many_pixels_is_refused(monkeypatch):
    monkeypatch.setattr(uploads, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ValueError, match="too large to train on"):
        uploads.check_image("big.png", png((200, 200)))


def test_every_problem_is_reported_at_once_and_counts_are_checked():
    with pytest.raises(ValueError, match=r"'a\.txt'.*; 'b\.png'"):
        uploads.check_images([("a.txt", b""), ("b.png", b"junk"), ("c.png", png())])
    with pytest.raises(ValueError, match="1 image given: textual inversion needs at least 2"):
        uploads.check_images([("a.png", png())])


def test_folder_reading_keeps_images_only(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "a.txt").write_text("a caption")
    assert [name for name, _ in uploads.read_folder(tmp_path)] == ["a.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no PNG, JPEG or WebP images"):
        uploads.read_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist on the machine running the studio"):
        uploads.read_folder(tmp_path / "missing")


def test_an_image_too_large_to_open_is_a_value_error_naming_it(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above 2000 pixels: 64×64 is a "bomb"
    with pytest.raises(ValueError, match=r"'bomb.png' is too large to train on .*resize it below"):
        uploads.check_image("bomb.png", png())
    with pytest.raises(ValueError, match=r"'bomb.png' is too large to train on"):
        uploads.check_images([("bomb.png", png()), ("ok.png", png())])


def test_thumbnails_show_what_the_trainer_reads():
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), 20000, dtype=np.uint16)).save(buffer, format="PNG")  # I;16
    assert uploads.thumbnail(buffer.getvalue()).getpixel((0, 0)) == (78, 78, 78)  # not clipped to white
    with pytest.raises(OSError, match="it is not an image"):  # what the Train page catches
        uploads.thumbnail(b"hello")
