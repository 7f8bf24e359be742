"""The demo world's vocabulary, parser, renderer and captions."""

import random
from dataclasses import replace

import numpy as np
import pytest

from demo import world
from demo.world import Concept, caption, parse_concept, render, sample_training_concept


def test_world_is_as_big_as_the_issue_asks():
    assert {"circle", "square", "triangle"} <= set(world.SHAPES) and len(world.SHAPES) >= 5
    assert len(world.TRAIN_COLOURS) >= 8
    assert len(world.HELD_OUT_COMBOS) >= 4 and world.HELD_OUT_COLOURS
    assert set(world.SIZES) == {"small", "medium", "large"}
    assert {"striped", "dotted"} <= set(world.PATTERNS)


def test_render_is_deterministic_for_a_seed():
    concept = Concept("star", "red", "blue", "small", "left", "striped")
    a = np.asarray(render(concept, random.Random(7)))
    b = np.asarray(render(concept, random.Random(7)))
    c = np.asarray(render(concept, random.Random(8)))
    assert a.shape == (world.RESOLUTION, world.RESOLUTION, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_render_draws_the_colour_on_the_background():
    image = np.asarray(
        render(Concept("square", "red", "white", "large", "center"), random.Random(0), jitter=False)
    )
    assert tuple(image[0, 0]) == world.BACKGROUNDS["white"]
    assert tuple(image[16, 16]) == world.COLOURS["red"]


def test_render_at_any_resolution():
    assert render(Concept("circle", "blue"), random.Random(0), resolution=64).size == (64, 64)


def test_sizes_are_ordered_in_pixels():
    areas = []
    for size in ("small", "medium", "large"):
        img = np.asarray(render(Concept("square", "white", "black", size), random.Random(0), jitter=False))
        areas.append((img.mean(axis=2) > 128).sum())
    assert areas[0] < areas[1] < areas[2]


def test_shape_on_its_own_colour_is_refused():
    with pytest.raises(ValueError, match="invisible"):
        render(Concept("circle", "blue", "blue"), random.Random(0))


def test_parse_concept_reads_every_field():
    c = parse_concept("A small striped purple triangle on the left on a blue background")
    assert c == Concept("triangle", "purple", "blue", "small", "left", "striped")
    assert parse_concept("pink star") == Concept("star", "pink")
    assert parse_concept("white circle on a white background").background == "white"
    assert parse_concept("a red cross on a grey background").background == "gray"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zebra", "unknown word"),
        ("red", "no shape"),
        ("circle", "no colour"),
        ("red blue circle", "two colours"),
    ],
)
def test_parse_concept_rejects_with_a_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        parse_concept(text)


def test_caption_round_trips_through_the_parser():
    rng = random.Random(3)
    for _ in range(200):
        concept = sample_training_concept(rng)
        plain_unsaid = replace(concept, pattern=None) if concept.pattern == "plain" else concept
        assert parse_concept(caption(concept)) == plain_unsaid
        variant = parse_concept(caption(concept, rng))
        assert (variant.shape, variant.colour) == (concept.shape, concept.colour)


def test_held_out_concepts_never_appear_in_training():
    rng = random.Random(0)
    held_words = set(world.HELD_OUT_COLOURS)
    for _ in range(5000):
        concept = sample_training_concept(rng)
        assert not concept.is_held_out
        assert not held_words & set(caption(concept, rng).split())
    assert not held_words & set(world.caption_words())
    assert Concept("triangle", "purple").is_held_out and Concept("square", "pink").is_held_out


def test_readme_demo_world_example_runs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("<!-- section: demo-world -->", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md (demo world)", "exec"), {})
