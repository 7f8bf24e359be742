"""The shipped demo model: loads with plain diffusers, is small, and draws what prompts ask for."""

import json

import numpy as np
import pytest
import torch

from demo import DEMO_MODEL_DIR, world
from demo.build import METADATA_FILE
from demo.evaluate import generate
from demo.judge import judge


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(DEMO_MODEL_DIR)  # no extra arguments needed
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_model_files_are_at_most_20_mb():
    total = sum(f.stat().st_size for f in DEMO_MODEL_DIR.rglob("*") if f.is_file())
    assert 0 < total <= 20e6


def test_model_is_a_v_prediction_sd_pipeline_at_the_world_resolution(pipe):
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == world.RESOLUTION
    assert pipe.safety_checker is None and pipe.text_encoder.dtype == torch.float32


def test_metadata_lists_the_held_out_concepts_and_words():
    meta = json.loads((DEMO_MODEL_DIR / METADATA_FILE).read_text())
    assert meta["held_out"]["combinations"] == [f"{c} {s}" for c, s in world.HELD_OUT_COMBOS]
    assert meta["held_out"]["colours"] == list(world.HELD_OUT_COLOURS)
    assert meta["shapes"] == list(world.SHAPES) and meta["resolution"] == world.RESOLUTION


def test_tokenizer_knows_every_caption_word_but_no_held_out_colour(pipe):
    for word in world.caption_words():
        assert pipe.tokenizer.tokenize(word) == [word + "</w>"]
    assert pipe.tokenizer.tokenize("pink") != ["pink</w>"]


@pytest.mark.parametrize("colour", ["red", "blue", "yellow", "green", "white"])
def test_model_draws_the_colour_the_prompt_asks_for(pipe, colour):
    images = generate(pipe, [f"a {colour} square"] * 2, [0, 1])
    assert [judge(im).colour for im in images] == [colour, colour]


def test_model_draws_the_background_and_the_size_asked_for(pipe):
    prompts = ["a red circle on a blue background", "a small white star", "a large white star"]
    blue_bg, small, large = (judge(im) for im in generate(pipe, prompts, [0, 0, 0]))
    assert blue_bg.background == "blue" and blue_bg.colour == "red"
    assert small.extent < large.extent


def test_same_seed_same_image(pipe):
    a, b = generate(pipe, ["a black triangle", "a black triangle"], [7, 7])
    assert np.array_equal(np.asarray(a), np.asarray(b))
