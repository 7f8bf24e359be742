"""Training data: EXIF, captions, templates, crops, buckets, flips, alpha weights, early clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from trainers.data import DataError, fill_template, load_images, template_set
from trainers.samples import batches, bucket_for, build_samples


def _save(path, size=(32, 32), colour=(200, 30, 40), mode="RGB"):
    Image.new(mode, size, colour if mode == "RGB" else (*colour, 255)).save(path)
    return path


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    (loaded,) = load_images(tmp_path)
    assert loaded.image.size == (20, 40)


def test_captions_come_from_txt_files(tmp_path):
    _save(tmp_path / "a.png")
    _save(tmp_path / "b.webp")
    (tmp_path / "a.txt").write_text("on a wooden table\n")
    images = load_images(tmp_path)
    assert [(i.path.name, i.caption) for i in images] == [("a.png", "on a wooden table"), ("b.webp", "")]


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (lambda d: None, "holds 0 image"),
        (lambda d: (d / "x.png").write_bytes(b"not a png"), "cannot read image"),
        (lambda d: _save(d / "tiny.png", size=(8, 8)), "smaller than 16"),
    ],
)
def test_bad_folders_fail_before_any_model_loads(tmp_path, setup, fragment):
    setup(tmp_path)
    with pytest.raises(DataError, match=fragment):
        load_images(tmp_path)


def test_too_few_images_and_missing_folder(tmp_path):
    _save(tmp_path / "a.png")
    with pytest.raises(DataError, match="at least 3"):
        load_images(tmp_path, min_images=3)
    with pytest.raises(DataError, match="does not exist"):
        load_images(tmp_path / "nope")


def test_too_few_images_names_the_files_of_other_image_types(tmp_path):
    _save(tmp_path / "a.png")
    for name in ("b.bmp", "c.TIF", "notes.md"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(DataError, match=r"holds 1 image.*; convert b\.bmp, c\.TIF to PNG$"):
        load_images(tmp_path, min_images=3)


def test_a_png_pil_refuses_with_a_value_error_is_named(tmp_path):
    """PIL raises ValueError (not OSError) for a text chunk that decompresses past its 1 MB limit."""
    from PIL.PngImagePlugin import PngInfo

    _save(tmp_path / "ok.png")
    info = PngInfo()
    info.add_text("comment", "x" * 2_000_000, zip=True)  # a zTXt chunk of a few KB
    Image.new("RGB", (32, 32)).save(tmp_path / "bomb.png", pnginfo=info)
    with pytest.raises(
        DataError, match=r"cannot read image .*bomb\.png \(Decompressed data too large.*re-save"
    ):
        load_images(tmp_path)


def test_a_struct_error_from_pil_is_named_too(tmp_path, monkeypatch):
    """A cut header field reaches struct.unpack in PIL: struct.error is neither OSError nor ValueError."""
    import struct

    import trainers.pictures

    def cut(image):
        raise struct.error("unpack requires a buffer of 4 bytes")

    _save(tmp_path / "cut.png")
    monkeypatch.setattr(trainers.pictures.ImageOps, "exif_transpose", cut)
    with pytest.raises(DataError, match=r"cannot read image .*cut\.png \(unpack requires"):
        load_images(tmp_path)


def test_a_fully_transparent_image_is_refused_with_its_name(tmp_path):
    _save(tmp_path / "ok.png")
    Image.new("RGBA", (32, 32), (255, 255, 255, 0)).save(tmp_path / "clear.png")
    with pytest.raises(DataError, match=r"image .*clear\.png is fully transparent"):
        load_images(tmp_path)
    half = Image.new("RGBA", (32, 32), (255, 255, 255, 0))
    half.paste((10, 20, 30, 255), (0, 0, 16, 32))
    half.save(tmp_path / "clear.png")
    assert [i.image.mode for i in load_images(tmp_path)] == ["RGBA", "RGB"]


def test_images_only_in_subfolders_get_a_hint(tmp_path):
    (tmp_path / "cats").mkdir()
    _save(tmp_path / "cats" / "a.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"its subfolders cats/ hold images, but subfolders are not searched"):
        load_images(tmp_path)


def test_templates_fill_name_and_filewords():
    assert fill_template("a photo of a [name], [filewords]", "<cat> <cat>_1", "on a sofa") == (
        "a photo of a <cat> <cat>_1, on a sofa"
    )
    assert fill_template("[name], [filewords]", "<cat>", "") == "<cat>"
    assert template_set("style")[0] == "a painting in the style of [name], [filewords]"
    assert template_set("object", family_object_templates=("a [name]",)) == ("a [name], [filewords]",)


def test_template_file_lines_must_hold_name(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("a [name] by [filewords]\n\nthe [name]\n")
    assert template_set(str(good)) == ("a [name] by [filewords]", "the [name]")
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo\n")
    with pytest.raises(DataError, match=r"must contain \[name\]"):
        template_set(str(bad))


def test_other_aspect_ratios_are_cropped_not_squashed(tmp_path):
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 16, 32))  # a red band at the far left: cropped away by a centre crop
    image.save(tmp_path / "wide.png")
    samples = build_samples(
        load_images(tmp_path),
        resolution=32,
        crop="center",
        flip=False,
        alpha_weight=False,
        multiple=8,
        seed=0,
    )
    (sample,) = samples
    assert sample.pixels.shape == (3, 32, 32)
    assert torch.allclose(sample.pixels[:, :, 0], torch.tensor([-1.0, -1.0, 1.0])[:, None].expand(3, 32))


def test_buckets_keep_the_aspect_ratio_and_batches_stay_in_one_bucket(tmp_path):
    _save(tmp_path / "wide.png", size=(64, 32))
    _save(tmp_path / "square.png", size=(40, 40))
    assert bucket_for((64, 32), 32, 8) == (48, 24)
    samples = build_samples(
        load_images(tmp_path), resolution=32, crop="bucket", flip=True, alpha_weight=False, multiple=8, seed=0
    )
    assert sorted({s.bucket for s in samples}) == [(32, 32), (48, 24)]
    for batch in batches(samples, 2, seed=0, epoch=0):
        assert len({samples[i].bucket for i in batch}) == 1


def test_flips_are_mirrors_and_random_crops_are_seeded(tmp_path):
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 8, 32))
    image.save(tmp_path / "a.png")
    samples = build_samples(
        load_images(tmp_path), resolution=32, crop="center", flip=True, alpha_weight=False, multiple=8, seed=0
    )
    assert [s.flipped for s in samples] == [False, True]
    assert torch.equal(samples[1].pixels, samples[0].pixels.flip(-1))
    Image.new("RGB", (48, 32), (0, 0, 0)).save(tmp_path / "a.png")  # wide: random crops have room to move
    kwargs = dict(resolution=24, crop="random", flip=False, alpha_weight=False, multiple=8)
    first = build_samples(load_images(tmp_path), seed=1, **kwargs)
    again = build_samples(load_images(tmp_path), seed=1, **kwargs)
    assert len(first) == 4 and all(torch.equal(a.pixels, b.pixels) for a, b in zip(first, again, strict=True))


def test_alpha_channel_becomes_a_loss_weight(tmp_path):
    image = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 16, 32))
    image.save(tmp_path / "a.png")
    (sample,) = build_samples(
        load_images(tmp_path), resolution=32, crop="center", flip=False, alpha_weight=True, multiple=8, seed=0
    )
    assert sample.weight[0, 0, 0] == 1.0 and sample.weight[0, 0, 31] == 0.0
    assert sample.pixels[:, 0, 31].tolist() == [0.0, 0.0, 0.0]  # transparent pixels shown as mid-gray


def test_alpha_weight_without_alpha_is_an_error(tmp_path):
    _save(tmp_path / "a.png")
    with pytest.raises(DataError, match="no training image has an alpha channel"):
        build_samples(
            load_images(tmp_path),
            resolution=32,
            crop="center",
            flip=False,
            alpha_weight=True,
            multiple=8,
            seed=0,
        )


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch(tmp_path):
    for i in range(5):
        _save(tmp_path / f"{i}.png", colour=(i * 40, 0, 0))
    samples = build_samples(
        load_images(tmp_path), resolution=32, crop="center", flip=True, alpha_weight=False, multiple=8, seed=0
    )
    assert batches(samples, 4, 3, 7) == batches(samples, 4, 3, 7)
    assert batches(samples, 4, 3, 7) != batches(samples, 4, 3, 8)
    assert all(len(b) == 4 for b in batches(samples, 4, 3, 7))


def test_sixteen_bit_grayscale_is_scaled_not_clipped_to_white(tmp_path):
    Image.fromarray(np.full((20, 20), 30000, dtype=np.uint16)).save(tmp_path / "deep.png")
    (loaded,) = load_images(tmp_path)
    assert loaded.image.mode == "RGB" and loaded.image.getpixel((0, 0)) == (117, 117, 117)  # 30000 / 257


def test_captions_with_a_byte_order_mark_read_and_other_encodings_are_clear_errors(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("\ufeffa red car".encode())
    assert load_images(tmp_path)[0].caption == "a red car"
    (tmp_path / "a.txt").write_bytes("caf\xe9 sign".encode("latin-1"))
    with pytest.raises(DataError, match=r"a\.txt is not UTF-8.*re-save it as UTF-8"):
        load_images(tmp_path)


def test_sdxl_time_ids_say_the_source_size_and_where_each_crop_lies(tmp_path):
    from PIL import ImageOps

    from trainers.data import TrainImage
    from trainers.samples import _to_tensors

    # (30, 60, 3): every column differs, so a crop's place and mirroring show in its pixels
    columns = np.tile(np.arange(60, dtype=np.uint8)[None, :, None] * 4, (30, 1, 3))
    image = Image.fromarray(columns)
    item = TrainImage(path=tmp_path / "wide.png", image=image, caption="")
    samples = build_samples(
        [item], resolution=16, crop="random", flip=True, alpha_weight=False, multiple=8, seed=3
    )
    scaled = image.resize((32, 16), Image.Resampling.BICUBIC)  # covers 16x16, aspect kept
    for sample in samples:
        height, width, top, left, target_h, target_w = sample.time_ids
        assert (height, width, target_h, target_w) == (30, 60, 16, 16)
        shown = ImageOps.mirror(scaled) if sample.flipped else scaled
        expected, _ = _to_tensors(shown.crop((left, top, left + 16, top + 16)), False)
        assert torch.equal(sample.pixels, expected)  # the crop the ids describe is the one trained on
    assert len({sample.time_ids[3] for sample in samples}) > 2  # random crops lie at different places
    (centre,) = build_samples(
        [item], resolution=16, crop="center", flip=False, alpha_weight=False, multiple=8, seed=3
    )
    assert centre.time_ids == (30, 60, 0, 8, 16, 16)
