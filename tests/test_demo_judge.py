"""The judge reads the renderer's own images back: colour, shape, background, size (at 32 px and larger)."""

import math
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from demo import world
from demo.judge import distance_to, judge, matches
from demo.world import Concept, render, sample_training_concept


@pytest.mark.parametrize("resolution", [32, 64])
def test_judge_reads_clean_plain_renders_perfectly(resolution):
    rng = random.Random(resolution)
    wrong = Counter()
    for _ in range(300):
        concept = sample_training_concept(rng)
        concept = Concept(concept.shape, concept.colour, concept.background, concept.size, concept.position)
        verdict = judge(render(concept, rng, resolution=resolution))
        wrong.update(name for name, ok in matches(verdict, concept).items() if not ok)
    assert wrong["colour"] == wrong["shape"] == wrong["background"] == wrong["size"] == 0, wrong


def test_judge_reads_patterned_renders_almost_always():
    rng = random.Random(5)
    wrong, n = Counter(), 300
    for _ in range(n):
        c = sample_training_concept(rng)
        concept = Concept(
            c.shape, c.colour, c.background, c.size, c.position, rng.choice(["striped", "dotted"])
        )
        wrong.update(k for k, ok in matches(judge(render(concept, rng)), concept).items() if not ok)
    assert max(wrong[k] for k in ("colour", "shape", "background", "size")) <= 0.03 * n, wrong


@pytest.mark.parametrize("shape", world.SHAPES)
def test_every_shape_is_told_apart_at_every_size(shape):
    for size in world.SIZES:
        for colour in ("red", "white", "black"):
            background = "blue" if colour != "blue" else "gray"
            verdict = judge(render(Concept(shape, colour, background, size, "center"), random.Random(1)))
            assert (verdict.shape, verdict.size, verdict.colour) == (shape, size, colour)


def test_judge_reports_held_out_colours_too():
    verdict = judge(render(Concept("square", "pink", size="large"), random.Random(0)))
    assert verdict.colour == "pink" and verdict.colour_distance < 30


def test_distance_to_falls_as_the_colour_approaches_the_target():
    far = render(Concept("circle", "green", size="large"), random.Random(0), jitter=False)
    near = render(Concept("circle", "purple", size="large"), random.Random(0), jitter=False)
    exact = render(Concept("circle", "pink", size="large"), random.Random(0), jitter=False)
    d = [distance_to(im, "pink circle") for im in (far, near, exact)]
    assert d[0] > d[1] > d[2] and d[2] < 5


def test_an_empty_image_has_no_foreground():
    verdict = judge(Image.new("RGB", (32, 32), (128, 128, 128)))
    assert verdict.shape is None and verdict.colour is None and verdict.background == "gray"
    assert distance_to(Image.new("RGB", (32, 32), (128, 128, 128)), "red circle") == float("inf")


def test_judge_survives_blur_like_a_model_sample():
    image = render(Concept("square", "red", size="large"), random.Random(0))
    blurred = image.resize((16, 16), Image.BILINEAR).resize((32, 32), Image.BILINEAR)
    verdict = judge(blurred)
    assert verdict.colour == "red" and verdict.shape == "square"


def test_judge_accepts_arrays():
    arr = np.asarray(render(Concept("star", "yellow", "black", "large"), random.Random(0)))
    assert judge(arr).shape == "star"


def test_stray_specks_of_a_noisy_sample_do_not_change_the_verdict():
    rng = random.Random(2)
    for shape in world.SHAPES:
        clean = render(Concept(shape, "orange", "yellow", "medium", "center"), rng)
        noisy = np.asarray(clean).copy()
        noisy[2, 3], noisy[29, 27], noisy[4, 28] = (255, 255, 255), (0, 0, 0), (0, 0, 0)
        a, b = judge(clean), judge(noisy)
        assert (b.shape, b.colour, b.size) == (a.shape, a.colour, a.size) == (shape, "orange", "medium")


ARM = 1 / 3  # the cross's arm half-width, as the world draws it
OUTLINES = {  # corners in a [-1, 1] box, apex up, drawn by PIL rather than the world's renderer
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 1), (-1, 1)],
    "cross": [
        *[(-ARM, -1), (ARM, -1), (ARM, -ARM), (1, -ARM), (1, ARM), (ARM, ARM)],
        *[(ARM, 1), (-ARM, 1), (-ARM, ARM), (-1, ARM), (-1, -ARM), (-ARM, -ARM)],
    ],
    "star": [
        (
            (1 if i % 2 == 0 else 0.45) * math.cos(i * math.pi / 5 - math.pi / 2),
            (1 if i % 2 == 0 else 0.45) * math.sin(i * math.pi / 5 - math.pi / 2),
        )
        for i in range(10)
    ],
}


def _drawn(shape: str, degrees: float, *, side: int, antialiased: bool) -> Image.Image:
    """A yellow shape drawn with PIL, turned by `degrees`, 56% of the side, centred on the world's gray."""
    scale = 4 if antialiased else 1
    n, half, turn = side * scale, 0.28 * side * scale, math.radians(degrees)
    cos, sin = math.cos(turn), math.sin(turn)
    points = [
        (n / 2 + half * (x * cos - y * sin), n / 2 + half * (x * sin + y * cos)) for x, y in OUTLINES[shape]
    ]
    image = Image.new("RGB", (n, n), world.BACKGROUNDS["gray"])
    ImageDraw.Draw(image).polygon(points, fill=world.COLOURS["yellow"])
    return image.resize((side, side), Image.LANCZOS) if antialiased else image


@pytest.mark.parametrize("shape", ["square", "triangle", "cross", "star"])
def test_a_tilted_shape_keeps_its_shape(shape):
    """A user's drawing may be tilted (the renderer never tilts): a square at 6-15 degrees, cropped to its
    bounding box, is rounder than an upright one and was read as a circle."""
    wrong = [
        (degrees, side, antialiased, verdict.shape)
        for degrees in (-15, -12, -9, -6, -3, 3, 6, 9, 12, 15)
        for side in (32, 128)
        for antialiased in (False, True)
        if (verdict := judge(_drawn(shape, degrees, side=side, antialiased=antialiased))).shape != shape
    ]
    assert wrong == []


def test_circles_drawn_with_pil_stay_circles_at_every_size():
    """The tilted templates take no circle: a rounded tilted square must not outscore a real circle."""
    for side in (32, 64, 128):
        for extent in (0.3, 0.38, 0.5, 0.56, 0.64, 0.78):
            for antialiased in (False, True):
                scale = 4 if antialiased else 1
                n, half = side * scale, extent * side * scale / 2
                image = Image.new("RGB", (n, n), world.BACKGROUNDS["gray"])
                ImageDraw.Draw(image).ellipse(
                    [n / 2 - half, n / 2 - half, n / 2 + half, n / 2 + half], "cyan"
                )
                image = image.resize((side, side), Image.LANCZOS) if antialiased else image
                assert judge(image).shape == "circle", (side, extent, antialiased)
