"""studio/generation/guidance.py: guide specs, built-in losses, the user-module contract, and their effect."""

import numpy as np
import pytest
import torch
from PIL import Image

from studio.generation import GenerateRequest, GuideError, Session, parse_guide
from studio.generation.guidance import DEFAULT_SCALE, colour_rgb, guided_x0
from trainers.models import LoadedModel
from trainers.tiny import tiny_pipeline


def test_colours_by_name_and_hex():
    assert colour_rgb("#00ff00") == (0.0, 1.0, 0.0)
    assert colour_rgb("#f00") == (1.0, 0.0, 0.0)
    assert colour_rgb("navy") == (0.0, 0.0, 128 / 255)
    r, g, b = colour_rgb("green")  # the demo world's green when the demo package is present
    assert g > r and g > b
    with pytest.raises(GuideError, match="unknown colour 'greenish'"):
        colour_rgb("greenish")


def test_spec_options():
    guide = parse_guide("color=green,scale=0.25,every=3")
    assert (guide.kind, guide.scale, guide.every) == ("color", 0.25, 3)
    assert [guide.active(i) for i in range(4)] == [True, False, False, True]
    assert parse_guide("colour=#123456").scale == DEFAULT_SCALE


@pytest.mark.parametrize(
    "spec, words",
    [
        ("sharpness=3", "unknown guide"),
        ("color", "unknown guide"),
        ("brightness=bright", "takes a number between 0 and 1"),
        ("contrast=1.5", "takes a number between 0 and 1"),
        ("color=red,speed=2", "bad option"),
        ("color=red,every=0", "every must be 1 or more"),
        ("color=red,scale=2", "share of the loss"),
        ("color=red,scale=0", "share of the loss"),
        ("match=/no/such/image.png", "match image /no/such/image.png does not exist"),
        ("module=nomodulecolon", "write module:function"),
        ("module=no_such_module_xyz:f", "cannot import"),
    ],
)
def test_bad_specs_say_what_to_write(spec, words):
    with pytest.raises(GuideError, match=words):
        parse_guide(spec)


def test_losses_are_zero_at_their_target():
    green = torch.zeros(1, 3, 4, 4)
    green[:, 1] = 1.0
    assert parse_guide("color=#00ff00").loss(green).item() == 0
    grey = torch.full((1, 3, 4, 4), 0.5)
    assert parse_guide("brightness=0.5").loss(grey).item() == pytest.approx(0, abs=1e-12)
    assert parse_guide("contrast=0").loss(grey).item() == pytest.approx(0, abs=1e-12)


def test_match_loss_reads_and_resizes_the_image(tmp_path):
    path = tmp_path / "ref.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    loss = parse_guide(f"match={path}").loss
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    assert loss(red).item() == pytest.approx(0, abs=1e-6)
    assert loss(torch.zeros(1, 3, 8, 8)).item() > 0.3


def test_user_module_contract(tmp_path, monkeypatch):
    (tmp_path / "my_losses.py").write_text(
        "def more_blue(image):\n    return (image[:, 2] - 0.9).abs().mean()\n"
        "def not_scalar(image):\n    return image.mean(dim=1)\n"
        "def constant(image):\n    import torch\n    return torch.tensor(1.0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    guide = parse_guide("module=my_losses:more_blue,scale=1")
    assert guide.kind == "module" and guide.scale == 1
    with pytest.raises(GuideError, match="has no function 'nope'"):
        parse_guide("module=my_losses:nope")
    identity = lambda x: x.clamp(0, 1)  # noqa: E731  (a "decoder" that is the identity)
    x0 = torch.full((1, 3, 4, 4), 0.5)
    moved = guided_x0(x0, [guide], 0, identity)
    assert (moved[:, 2] > x0[:, 2]).all() and torch.equal(moved[:, :2], x0[:, :2])
    with pytest.raises(GuideError, match="must return a scalar"):
        guided_x0(x0, [parse_guide("module=my_losses:not_scalar")], 0, identity)
    with pytest.raises(GuideError, match="not differentiable"):
        guided_x0(x0, [parse_guide("module=my_losses:constant")], 0, identity)


def test_a_module_edited_since_it_was_imported_is_reloaded(tmp_path, monkeypatch):
    # the studio is one long process: the loss that runs must be the file whose hash provenance records
    import sys

    source = tmp_path / "edited_losses.py"
    source.write_text("def level(image):\n    return image.mean() * 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "edited_losses", raising=False)
    image = torch.full((1, 3, 2, 2), 0.5)
    first = parse_guide("module=edited_losses:level")
    assert first.loss(image).item() == pytest.approx(0.5)
    source.write_text("def level(image):\n    return image.mean() * 3\n")  # the same size, maybe second
    second = parse_guide("module=edited_losses:level")
    assert second.loss(image).item() == pytest.approx(1.5)
    assert second.file.sha256 != first.file.sha256


def test_inactive_steps_leave_x0_alone():
    x0 = torch.rand(1, 3, 4, 4)
    assert guided_x0(x0, [parse_guide("color=red,every=2")], 1, lambda x: x) is x0


def test_colour_guide_moves_a_tiny_model_towards_the_colour():
    pipe = tiny_pipeline("sd1")
    session = Session(LoadedModel(pipe=pipe, family="w32", source="tiny"))

    def channel_means(guides=()):
        [result] = session.generate(GenerateRequest("a red circle", steps=6, guides=guides))
        return np.asarray(result.image, dtype=np.float64).mean(axis=(0, 1)) / 255  # (3,)

    plain = channel_means()
    blue = channel_means(("color=#0000ff",))
    assert blue[2] - plain[2] > 0.02 and blue[0] < plain[0]


def test_a_guide_function_with_the_wrong_signature_is_explained():
    with pytest.raises(GuideError, match=r"os.getcwd\(\) cannot be called as function\(image\) -> scalar"):
        parse_guide("module=os:getcwd")


def test_a_non_scalar_or_failing_loss_names_the_guide_and_the_problem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "guide_shapes.py").write_text(
        "def per_channel(image):\n    return image.mean(dim=(0, 2, 3))\n\n"
        "def broken(image):\n    return image.no_such_method()\n"
    )
    pipe = tiny_pipeline("sd1")
    session = Session(LoadedModel(pipe=pipe, family="sd1", source="tiny"))
    with pytest.raises(GuideError, match=r"got one of shape \(3,\)"):
        session.generate(GenerateRequest("a circle", steps=2, guides=("module=guide_shapes:per_channel",)))
    with pytest.raises(GuideError, match=r"guide 'module=guide_shapes:broken' failed \(.*no_such_method"):
        session.generate(GenerateRequest("a circle", steps=2, guides=("module=guide_shapes:broken",)))


# --- a loss that is not finite, and user code that fails ---


def identity(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1)  # a "decoder" that is the identity on [0, 1]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a guide module into an importable folder: user_module('name', 'source') -> its spec prefix."""
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        monkeypatch.delitem(sys.modules, name, raising=False)
        (tmp_path / f"{name}.py").write_text(source)
        return f"module={name}"

    return write


@pytest.mark.parametrize(
    "body, value",
    [
        ("return (image.mean() - 2).sqrt()", "nan"),  # the square root of a negative number
        ("return (image[:, 2] - 0.9).abs().mean() / 0", "inf"),
    ],
)
def test_a_loss_that_is_not_finite_is_an_error_naming_the_guide(user_module, body, value):
    spec = user_module("nonfinite_loss", f"def f(image):\n    {body}\n") + ":f"
    x0 = torch.full((1, 3, 4, 4), 0.5)
    with pytest.raises(GuideError, match=rf"guide '{spec}': the loss is {value}, not a finite number"):
        guided_x0(x0, [parse_guide(spec)], 0, identity)


def test_a_gradient_that_is_not_finite_is_an_error_naming_the_guide(user_module):
    source = "def f(image):\n    return image.mean() + (image[:, 0, 0, 0] - 0.5).abs().sqrt().sum()\n"
    spec = user_module("nonfinite_grad", source) + ":f"
    x0 = torch.full((1, 3, 4, 4), 0.5)  # the square root's slope at 0 is infinite
    with pytest.raises(GuideError, match=rf"guide '{spec}': the loss is 0.5 but its gradient is not finite"):
        guided_x0(x0, [parse_guide(spec)], 0, identity)


def test_a_nan_loss_stops_the_generation_instead_of_a_black_image(user_module):
    spec = user_module("nan_session", "def f(image):\n    return (image.mean() - 2).sqrt()\n") + ":f"
    session = Session(LoadedModel(pipe=tiny_pipeline("sd1"), family="sd1", source="tiny"))
    with pytest.raises(GuideError, match="not a finite number"):
        session.generate(GenerateRequest("a white circle", steps=2, guides=(spec,)))


def test_a_guide_module_with_a_syntax_error_names_its_file_and_line(user_module):
    spec = user_module("colonless", "import torch\ndef more_blue(image)\n    return image.mean()\n")
    with pytest.raises(
        GuideError, match=r"guide 'module=colonless:more_blue': colonless.py line 2: expected ':'"
    ):
        parse_guide(spec + ":more_blue")


def test_a_guide_module_that_fails_on_import_is_a_guide_error_with_its_line(user_module):
    spec = user_module("raises_on_import", "import torch\n\nLEVEL = 1 / 0\n")
    with pytest.raises(
        GuideError, match=r"importing raises_on_import failed \(ZeroDivisionError: .*line 3\)"
    ) as info:
        parse_guide(spec + ":f")
    assert isinstance(info.value.__cause__, ZeroDivisionError)  # --debug shows the user's own traceback


def test_any_error_in_the_loss_names_the_guide_and_line_and_keeps_the_cause(user_module):
    spec = user_module(
        "name_error", "import torch\n\ndef f(image):\n    return image.mean() / undefined_name\n"
    )
    with pytest.raises(
        GuideError,
        match=r"guide 'module=name_error:f' failed \(NameError: .*undefined_name.*, at name_error.py line 4",
    ) as info:
        guided_x0(torch.full((1, 3, 4, 4), 0.5), [parse_guide(spec + ":f")], 0, identity)
    assert isinstance(info.value.__cause__, NameError)


def test_an_error_in_the_backward_pass_of_a_loss_is_a_guide_error(user_module):
    spec = user_module(
        "inplace_backward",
        "def f(image):\n    y = image.exp()\n    y.add_(1)\n    return y.mean()\n",  # exp saves y
    )
    with pytest.raises(GuideError, match=r"guide 'module=inplace_backward:f' failed \(RuntimeError"):
        guided_x0(torch.full((1, 3, 4, 4), 0.5), [parse_guide(spec + ":f")], 0, identity)


# --- match images are read as a viewer shows them ---


def test_a_sixteen_bit_match_image_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(np.full((8, 8), 20000, dtype=np.uint16)).save(path)  # 31 % gray, stored as I;16
    loss = parse_guide(f"match={path}").loss
    gray = torch.full((1, 3, 8, 8), round(20000 / 257) / 255)
    assert loss(gray).item() == pytest.approx(0, abs=1e-6)


def test_an_exif_rotated_match_image_is_used_upright(tmp_path):
    stored = np.zeros((8, 16, 3), dtype=np.uint8)  # stored wide: red left half, blue right half
    stored[:, :8, 0], stored[:, 8:, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view (a phone held upright)
    path = tmp_path / "rot.png"
    Image.fromarray(stored).save(path, exif=exif)
    loss = parse_guide(f"match={path}").loss
    upright = torch.zeros(1, 3, 16, 8)  # viewed tall: red on top, blue below
    upright[:, 0, :8], upright[:, 2, 8:] = 1.0, 1.0
    assert loss(upright).item() == pytest.approx(0, abs=1e-6)


def test_a_match_image_too_large_to_open_is_a_guide_error_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above twice this: 64×64 is a "bomb"
    with pytest.raises(
        GuideError,
        match=r"match image .*bomb.png is too large \(4096 pixels, more than the 2000 .*downscale it",
    ):
        parse_guide(f"match={path}")
