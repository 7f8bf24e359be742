"""Generation effects on the demo world, measured by pixel statistics and the demo judge."""

import random

import numpy as np
import pytest

from demo import DEMO_MODEL_DIR
from demo.judge import distance_to, judge
from demo.world import parse_concept, render
from studio.generation import GenerateRequest, Session, replay, save_png

pytestmark = pytest.mark.skipif(
    not (DEMO_MODEL_DIR / "model_index.json").is_file(),
    reason="demo/model is not built yet (python -m demo.build)",
)
SEEDS = (0, 1, 2)
STEPS = 12


@pytest.fixture(scope="module")
def session():
    return Session("demo")


def image(session, prompt, seed=0, **kw):
    kw.setdefault("steps", STEPS)
    return session.generate(GenerateRequest(prompt, seed=seed, **kw))[0].image


def green_share(img) -> float:
    """Fraction of pixels that are clearly green (G well above both R and B)."""
    rgb = np.asarray(img, dtype=np.int16)
    return float(((rgb[..., 1] - np.maximum(rgb[..., 0], rgb[..., 2])) > 40).mean())


def test_demo_session_is_the_demo_family(session):
    assert session.model.family == "demo"


def test_prompt_colour_is_what_the_judge_sees(session):
    verdicts = [judge(image(session, "a red circle", seed)) for seed in SEEDS]
    assert [v.colour for v in verdicts].count("red") >= 2


def test_green_guide_raises_the_green_share(session):
    for seed in SEEDS[:2]:
        plain = green_share(image(session, "a red square", seed))
        guided = green_share(image(session, "a red square", seed, guides=("color=green",)))
        assert guided > plain + 0.05, (seed, plain, guided)


def test_negative_prompt_pushes_away_from_a_colour(session):
    for prompt, seed in (("an orange circle", 0), ("a circle", 1)):
        free = distance_to(image(session, prompt, seed), "red circle")
        pushed = distance_to(image(session, prompt, seed, negative="red"), "red circle")
        assert pushed > free + 50, (prompt, seed, free, pushed)


def test_img2img_at_low_strength_stays_close_to_its_init_image(session, tmp_path):
    init = render(parse_concept("large blue square"), random.Random(0))
    path = tmp_path / "init.png"
    init.save(path)
    ref = np.asarray(init, dtype=np.float32)

    def distance(strength):
        out = image(session, "a yellow star", init_image=path, strength=strength, steps=STEPS)
        return float(np.abs(np.asarray(out, dtype=np.float32) - ref).mean())

    low, high = distance(0.2), distance(0.95)
    assert low < 25 and low < high / 2, (low, high)


def test_blend_weight_one_equals_its_operand(session):
    a = np.asarray(image(session, "a <1*red + 0*blue> triangle"))
    assert np.array_equal(a, np.asarray(image(session, "a red triangle")))


def test_swap_equals_the_written_token(session, tokensmith_home):
    from embeddings import Embedding, Store, word_vectors

    store = Store.for_home(tokensmith_home)
    _key, tokenizer, text_encoder = session.model.encoders[0]
    store.put(Embedding("my-purple", {"emb_params": word_vectors("purple", tokenizer, text_encoder)}))
    written = session.generate(GenerateRequest("a <my-purple> star", steps=STEPS), store=store)[0].image
    swapped = session.generate(
        GenerateRequest("a puppy star", steps=STEPS, swaps={"puppy": "<my-purple>"}), store=store
    )[0].image
    assert np.array_equal(np.asarray(written), np.asarray(swapped))
    assert judge(written).colour == "purple"


def test_prompt_editing_switches_colour(session):
    late = image(session, "a [red:blue:0.9] circle")
    early = image(session, "a [red:blue:0.1] circle")
    assert distance_to(early, "blue circle") < distance_to(late, "blue circle")


def test_replay_is_pixel_identical(session, tmp_path):
    [result] = session.generate(GenerateRequest("a green star on a white background", seed=4, steps=STEPS))
    path = save_png(result, tmp_path / "star.png")
    again = replay(path, store=None, session=session)
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))
