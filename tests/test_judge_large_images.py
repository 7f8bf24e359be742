"""Photo-sized training images on the demo world: the judge reads what trains (the centre crop at the
model's resolution), and reads any image at no more than MAX_SIDE px, so a 6000 px photo no longer costs it
minutes and GB (its templates are rendered at the side it reads an image at)."""

from PIL import Image, ImageDraw

import demo.judge as judge_module
from demo import world
from demo.judge import judge
from trainers.data import load_images
from trainers.validation import DemoJudgeMetric
from trainers.worldcaptions import world_captions


def _photo(size, *, background="gray", sides=None, shape="circle", colour="red", extent=0.56):
    """A `size` (width, height) picture with a shape `extent` of its shorter side wide in its middle, drawn
    with PIL; `sides`: a colour for what lies outside the centre square (which the centre crop cuts off)."""
    width, height = size
    image = Image.new("RGB", size, world.BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    if sides:
        left, top = (width - side) // 2, (height - side) // 2
        draw.rectangle([0, 0, width, height], fill=world.BACKGROUNDS[sides])
        draw.rectangle([left, top, left + side - 1, top + side - 1], fill=world.BACKGROUNDS[background])
    half, cx, cy = extent * side / 2, width / 2, height / 2
    box = [cx - half, cy - half, cx + half, cy + half]
    if shape == "circle":
        draw.ellipse(box, fill=world.COLOURS[colour])
    else:
        draw.rectangle(box, fill=world.COLOURS[colour])
    return image


def _folder(path, pictures):
    path.mkdir(parents=True)
    for i, picture in enumerate(pictures):
        picture.save(path / f"img{i}.png")
    return path


def test_the_judge_reads_a_large_image_at_no_more_than_max_side():
    assert judge_module.judged_size((2000, 1500)) == (judge_module.MAX_SIDE, 96)
    assert judge_module.judged_size((6000, 4000)) == (judge_module.MAX_SIDE, 85)
    for side in (32, 64, 128):  # the world's renders are read as they are
        assert judge_module.judged_size((side, side)) == (side, side)


def test_judging_a_large_photo_renders_templates_no_larger_than_a_render(monkeypatch):
    """The templates were rendered at the image's width: 2000 px (an 8000 px canvas each, 115 s and GB)."""
    asked, real = [], judge_module._templates

    def recording(resolution):
        asked.append(resolution)
        return real(min(resolution, 128))  # the old judge's 2000 px ask would take minutes

    monkeypatch.setattr(judge_module, "_templates", recording)
    verdict = judge(_photo((2000, 1500), shape="square", colour="yellow"))
    assert asked and max(asked) <= 128
    assert (verdict.shape, verdict.colour, verdict.background) == ("square", "yellow", "gray")


def test_a_large_photo_reads_as_its_downscaled_copy():
    photo = _photo((2000, 1500), background="blue", colour="orange")
    copy = photo.resize(judge_module.judged_size(photo.size), Image.Resampling.BOX)
    big, small = judge(photo), judge(copy)
    fields = ("colour", "shape", "background", "size", "position")
    assert [getattr(big, f) for f in fields] == [getattr(small, f) for f in fields]
    assert (big.colour, big.shape, big.background) == ("orange", "circle", "blue")


def test_a_non_square_image_is_sized_against_its_shorter_side():
    """A circle 56% of a 3:2 photo's height is medium, as in the square centre crop the trainer keeps; it
    was measured against the width (37%: small)."""
    photo = _photo((300, 200), extent=world.SIZES["medium"])
    crop = photo.crop((50, 0, 250, 200))
    assert judge(photo).size == judge(crop).size == "medium"


def test_background_captions_of_a_large_photo_equal_those_of_its_downscaled_copy(tmp_path):
    """What trains is the centre crop: a wide photo's yellow middle, not the blue sides the crop cuts off
    (which made up most of its border, so it was captioned 'on a blue background')."""
    wide, square = _photo((2400, 800), background="yellow", sides="blue"), _photo((2000, 1500))
    small = _folder(tmp_path / "small", [p.resize((p.width // 10, p.height // 10)) for p in (wide, square)])
    assert world_captions(load_images(small)) == ["on a yellow background", ""]
    large = _folder(tmp_path / "large", [wide, square])
    assert world_captions(load_images(large)) == ["on a yellow background", ""]


def test_the_preview_target_is_read_from_the_centre_crop_that_trains():
    """The blue sides and the yellow square between them read as a large yellow square on blue."""
    wides = [_photo((600 * k, 200 * k), background="yellow", sides="blue") for k in (1, 4)]
    for wide in wides:
        metric = DemoJudgeMetric.from_training_images([wide, wide])
        assert metric.target_shape == "circle"
        assert max(abs(a - b) for a, b in zip(metric.target_rgb, world.COLOURS["red"], strict=True)) < 20
