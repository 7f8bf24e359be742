"""bench/learn_concepts.py judges what it says: renders of a concept pass its bar, renders of another colour
or shape fail it, and one concept runs end to end to its `learned ...` line."""

import json
import random

import pytest

from demo.world import parse_concept, render
from tests.benchload import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("learn_concepts")


def renders(text: str, n: int = 12) -> list:
    rng = random.Random(5)
    return [render(parse_concept(text), rng) for _ in range(n)]


def test_renders_of_the_concept_pass_the_bar(bench):
    score = bench.score(renders("cyan circle"), "cyan circle")
    assert (score.colour, score.shape, score.samples) == (12, 12, 12)
    assert score.distance < 25  # the renderer's colour jitter only
    assert score.learned


@pytest.mark.parametrize("drawn", ["purple circle", "cyan square", "pink circle"])
def test_renders_of_another_colour_or_shape_fail_the_bar(bench, drawn):
    score = bench.score(renders(drawn), "cyan circle")
    assert not score.learned
    assert score.colour == 0 or score.shape == 0


def test_an_empty_image_counts_as_the_largest_distance(bench):
    from PIL import Image

    score = bench.score([Image.new("RGB", (32, 32), (128, 128, 128))], "red star")
    assert (score.colour, score.shape) == (0, 0)
    assert score.distance == pytest.approx(255 * 3**0.5)


def test_options_are_key_value_pairs(bench):
    assert bench.parse_options(["vectors=4", "learning-rate = 0.05"]) == {
        "vectors": "4",
        "learning_rate": "0.05",
    }
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.parse_options(["vectors"])


def test_a_bad_option_fails_before_any_training(bench):
    from trainers.config import ConfigError

    with pytest.raises(ConfigError, match="unknown training config key"):
        bench.main(["purple triangle", "--option", "vector=4"])
    with pytest.raises(ValueError, match="pink-ish"):
        bench.main(["pink-ish star"])


def test_one_concept_runs_to_its_learned_line(bench, capsys):
    options = ["steps=2", "preview_images=0", "refine_latents=0", "validate_every=0", "save_every=0"]
    assert bench.main(["orange star", *(arg for o in options for arg in ("--option", o))]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("learned orange star: no (distance ")  # 2 steps from `red circle` learn nothing
    assert "kept step 2 of 2; in words: distance " in last  # the world's own `a orange star`
    assert last.endswith("colour 12/12, shape 12/12)")  # its words draw it (held-out, zero-shot)


def test_images_and_render_size_set_the_training_renders(bench, capsys):
    options = ["steps=1", "preview_images=0", "refine_latents=0", "validate_every=0", "save_every=0"]
    argv = [
        "cyan circle",
        "--images",
        "3",
        "--render-size",
        "64",
        "--json",
        *(arg for o in options for arg in ("--option", o)),
    ]
    assert bench.main(argv) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert (row["concept"], row["images"], row["render_size"], row["trained_steps"]) == (
        "cyan circle",
        3,
        64,
        1,
    )
