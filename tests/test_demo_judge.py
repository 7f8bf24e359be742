"""The judge reads the renderer's own images back: colour, shape, background, size (at 32 px and larger)."""

import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

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
