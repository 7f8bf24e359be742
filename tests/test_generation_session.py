"""studio/generation/session.py on tiny random pipelines: parity, determinism, injection, swaps, blends."""

import numpy as np
import pytest
import torch

from embeddings import Embedding, Store
from embeddings.errors import TokensmithError
from studio.generation import GenerateRequest, PromptError, Session
from trainers.models import LoadedModel, detect_family
from trainers.tiny import tiny_pipeline

STEPS = 4


@pytest.fixture(scope="module")
def session():
    pipe = tiny_pipeline("sd1")
    return Session(LoadedModel(pipe=pipe, family=detect_family(pipe), source="tiny-sd1"))


@pytest.fixture(scope="module")
def sdxl_session():
    pipe = tiny_pipeline("sdxl")
    return Session(LoadedModel(pipe=pipe, family="sdxl", source="tiny-sdxl"))


@pytest.fixture
def store(tokensmith_home):
    store = Store.for_home(tokensmith_home)
    gen = torch.Generator().manual_seed(7)
    for name, n in (("cat", 2), ("dog", 1), ("catalog", 1)):
        store.put(Embedding(name, {"emb_params": torch.randn(n, 32, generator=gen)}))
    return store


def pixels(session, prompt, store=None, **kw):
    kw.setdefault("steps", STEPS)
    [result] = session.generate(GenerateRequest(prompt, **kw), store=store)
    return np.asarray(result.image).astype(np.int16)


def test_matches_the_diffusers_pipeline_for_a_plain_prompt(session):
    pipe = session.model.pipe
    ours = pixels(session, "a red circle", scheduler="ddim", guidance=7.5, seed=5)
    generator = torch.Generator().manual_seed(5)
    theirs = pipe(
        "a red circle", num_inference_steps=STEPS, guidance_scale=7.5, generator=generator, output_type="np"
    ).images[0]
    assert np.abs(ours - np.round(theirs * 255)).max() <= 1


def test_same_seed_same_image_other_seed_other_image(session):
    a = pixels(session, "a red circle", seed=1)
    assert (a == pixels(session, "a red circle", seed=1)).all()
    assert (a != pixels(session, "a red circle", seed=2)).any()


def test_batch_image_k_is_the_single_image_of_seed_plus_k(session):
    results = session.generate(GenerateRequest("a red circle", seed=3, num_images=2, steps=STEPS))
    assert [r.seed for r in results] == [3, 4]
    assert (np.asarray(results[1].image) == pixels(session, "a red circle", seed=4)).all()


def test_embedding_changes_the_image_and_weights_compose_with_it(session, store):
    plain = pixels(session, "a <dog> circle", store)
    weighted = pixels(session, "a (<dog>:1.4) circle", store)
    assert (plain != pixels(session, "a circle", store)).any()
    assert (plain != weighted).any()
    store.put(Embedding("dog", {"emb_params": torch.randn(1, 32) * 3}), overwrite=True)
    assert (weighted != pixels(session, "a (<dog>:1.4) circle", store)).any()  # the new vectors are used


def test_multi_vector_embedding_is_expanded(session, store):
    [result] = session.generate(GenerateRequest("a <cat>", steps=STEPS), store=store)
    tokenizer = session.model.pipe.tokenizer
    tokens = session.encoder.spell("cat").split()  # installed under an alias: '<tsK>', '<tsK>_1'
    assert len(tokens) == 2 and set(tokens) <= set(tokenizer.get_added_vocab())
    assert result.provenance["embeddings"][0]["name"] == "cat"
    assert result.provenance["embeddings"][0]["sha256"] == store.get("cat").sha256


def test_swap_gives_exactly_the_written_token(session, store):
    swapped = pixels(session, "a puppy on a mat", store, swaps={"puppy": "<cat>"}, seed=9)
    written = pixels(session, "a <cat> on a mat", store, seed=9)
    assert (swapped == written).all()


def test_blend_weight_one_equals_its_operand(session, store):
    assert (pixels(session, "a <1.0*<cat> + 0*<dog>>", store) == pixels(session, "a <cat>", store)).all()
    assert (pixels(session, "a <1*red + 0*blue> circle") == pixels(session, "a red circle")).all()


def test_blend_in_between_differs_from_both_ends(session, store):
    middle = pixels(session, "a <0.5*<dog> + 0.5*red>", store)
    assert (middle != pixels(session, "a <dog>", store)).any()
    assert (middle != pixels(session, "a red", store)).any()


def test_slerp_endpoints_are_the_operands(session, store):
    start = pixels(session, "a <slerp(<dog>, red, 0)>", store)
    assert (start == pixels(session, "a <dog>", store)).all()


def test_prompt_editing_at_zero_is_the_second_prompt_and_midway_differs(session):
    assert (pixels(session, "a [red:blue:0] circle") == pixels(session, "a blue circle")).all()
    midway = pixels(session, "a [red:blue:0.5] circle")
    assert (midway != pixels(session, "a red circle")).any()
    assert (midway != pixels(session, "a blue circle")).any()


def test_negative_prompt_and_negative_embedding_change_the_image(session, store):
    base = pixels(session, "a circle", store)
    assert (base != pixels(session, "a circle", store, negative="blue")).any()
    assert (base != pixels(session, "a circle", store, negative="<dog>")).any()


def test_unknown_embedding_suggests_close_names(session, store):
    with pytest.raises(PromptError, match=r"unknown embedding <catt>.*did you mean <cat>"):
        session.generate(GenerateRequest("a <catt>", steps=STEPS), store=store)


def test_embedding_of_another_width_is_refused_with_the_reason(session, store):
    store.put(Embedding("wide", {"emb_params": torch.randn(1, 768)}))
    with pytest.raises(TokensmithError, match="width 768"):
        session.generate(GenerateRequest("a <wide>", steps=STEPS), store=store)


def test_sdxl_injection_uses_both_encoders(sdxl_session, tokensmith_home):
    store = Store.for_home(tokensmith_home)
    gen = torch.Generator().manual_seed(1)
    clip_l, clip_g = torch.randn(1, 32, generator=gen), torch.randn(1, 48, generator=gen)
    store.put(Embedding("thing", {"clip_l": clip_l, "clip_g": clip_g}))
    first = pixels(sdxl_session, "a <thing>", store)
    store.put(Embedding("thing", {"clip_l": clip_l, "clip_g": clip_g * 4}), overwrite=True)
    assert (first != pixels(sdxl_session, "a <thing>", store)).any()  # clip_g reaches the UNet
    store.put(Embedding("thing", {"clip_l": clip_l * 4, "clip_g": clip_g}), overwrite=True)
    assert (first != pixels(sdxl_session, "a <thing>", store)).any()  # and so does clip_l
    assert (
        pixels(sdxl_session, "a puppy", store, swaps={"puppy": "<thing>"})
        == pixels(sdxl_session, "a <thing>", store)
    ).all()


@pytest.mark.parametrize("scheduler", ["dpm", "ddim", "euler", "euler-a", "heun", "unipc", "pndm", "ddpm"])
def test_every_scheduler_is_deterministic(session, scheduler):
    a = pixels(session, "a red circle", scheduler=scheduler, steps=4)
    assert (a == pixels(session, "a red circle", scheduler=scheduler, steps=4)).all()


def test_too_few_steps_for_pndm_is_a_clear_error(session):
    with pytest.raises(TokensmithError, match="at least 4 steps"):
        session.generate(GenerateRequest("a circle", scheduler="pndm", steps=3))


def test_on_step_reports_every_step(session):
    seen = []
    session.generate(GenerateRequest("a circle", steps=5, num_images=2), on_step=seen.append)
    assert [(s.image_index, s.step) for s in seen] == [(i, k) for i in range(2) for k in range(1, 6)]
    assert all(s.total_steps == 5 for s in seen)


def test_trace_strip_has_two_rows_and_a_column_per_step(session):
    from studio.generation.trace import CELL, LABEL_H, ROW_LABEL_W

    [result] = session.generate(GenerateRequest("a circle", steps=STEPS, trace_steps=(0, 2, 3)))
    assert result.trace.size == (ROW_LABEL_W + 3 * CELL, LABEL_H + 2 * CELL)


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"width": 18}, "multiple of"),
        ({"steps": 0}, "--steps"),
        ({"num_images": 0}, "--num-images"),
        ({"guidance": -1.0}, "--guidance"),
        ({"seed": -1}, "--seed"),
        ({"scheduler": "nope"}, "unknown scheduler"),
    ],
)
def test_bad_settings_are_refused(session, kw, words):
    with pytest.raises(TokensmithError, match=words):
        session.generate(GenerateRequest("a circle", **kw))


def test_a_prompt_longer_than_one_window_is_drawn_from_all_of_it(session, sdxl_session):
    """Past the window (14 tokens on the tiny model) the rest of a prompt still counts, and a long negative
    prompt pairs with a short prompt."""
    long = "a red circle. " + "blue " * 20 + "square"
    assert not np.array_equal(pixels(session, long), pixels(session, "a red circle."))
    assert not np.array_equal(
        pixels(session, "a red circle", negative="red " * 20), pixels(session, "a red circle", negative="red")
    )
    assert pixels(sdxl_session, long, negative="a " * 30).shape[-1] == 3


def test_sdxl_matches_the_diffusers_pipeline_for_a_plain_prompt(sdxl_session):
    pipe = sdxl_session.model.pipe
    ours = pixels(sdxl_session, "a red circle", scheduler="ddim", guidance=5.0, seed=2)
    generator = torch.Generator().manual_seed(2)
    theirs = pipe(
        "a red circle",
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=generator,
        output_type="np",
        height=16,
        width=16,
    ).images[0]
    assert np.abs(ours - np.round(theirs * 255)).max() <= 1


def test_heun_reports_progress_per_step_not_per_model_evaluation(session):
    seen = []
    session.generate(GenerateRequest("a circle", scheduler="heun", steps=5), on_step=seen.append)
    assert [s.step for s in seen] == [1, 2, 3, 4, 5] and {s.total_steps for s in seen} == {5}
    assert [s.timestep for s in seen] == [999, 749, 500, 250, 0]


def test_heun_trace_steps_span_the_whole_run(session, monkeypatch):
    from studio.generation import session as session_module

    frames, frame = [], session_module.TraceFrame

    def record(step, timestep, noisy, predicted):
        frames.append((step, timestep))
        return frame(step, timestep, noisy, predicted)

    monkeypatch.setattr(session_module, "TraceFrame", record)
    session.generate(GenerateRequest("a circle", scheduler="heun", steps=5, trace_steps=(0, 2, 4)))
    assert frames == [(0, 999), (2, 500), (4, 0)]


@pytest.mark.parametrize("guidance", [float("nan"), float("inf")])
def test_non_finite_guidance_is_refused(session, guidance):
    with pytest.raises(TokensmithError, match="--guidance must be a finite number"):
        session.generate(GenerateRequest("a circle", steps=2, guidance=guidance))


def test_zero_width_is_refused_not_taken_as_native(session):
    with pytest.raises(TokensmithError, match="width 0 does not fit this model"):
        session.generate(GenerateRequest("a circle", steps=2, width=0))


def test_a_swap_whose_word_is_in_no_prompt_of_the_run_is_an_error(session, store):
    from studio.generation import check_swaps

    with pytest.raises(TokensmithError, match="swap 'pupy' matches no word"):
        check_swaps([GenerateRequest("a puppy", steps=2, swaps={"pupy": "<dog>"})])
    check_swaps([GenerateRequest("a circle", negative="a Puppy", swaps={"puppy": "<dog>"})])
    # a grid's rows or variations' prompts: a swap word needs to occur in one of them only
    swaps = {"square": "triangle"}
    check_swaps([GenerateRequest("a red circle", swaps=swaps), GenerateRequest("a red square", swaps=swaps)])
    # the session itself does not refuse, so an image made before the check (its provenance holds such a
    # swap) still replays
    session.generate(GenerateRequest("a circle", steps=2, swaps={"dog": "<dog>"}), store=store)


# --- init images read as a viewer shows them ---


def test_an_init_image_file_is_read_upright_and_eight_bit(session, tmp_path):
    from PIL import Image

    from studio.generation.img2img import load_init_image

    gray16, rotated = tmp_path / "gray16.png", tmp_path / "rot.jpg"
    Image.fromarray(np.full((16, 16), 20000, dtype=np.uint16)).save(gray16)  # 31 % gray, stored as I;16
    wide = np.zeros((16, 32, 3), dtype=np.uint8)  # stored wide, red left; EXIF 6: viewed tall, red on top
    wide[:, :16, 0], wide[:, 16:, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(wide).save(rotated, exif=exif)
    assert load_init_image(gray16, (16, 16))[0].getpixel((0, 0)) == (78, 78, 78)  # not white
    upright, _sha = load_init_image(rotated, (16, 32))
    top, bottom = upright.getpixel((8, 4)), upright.getpixel((8, 28))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
    # reader 1 (images made before) still gets the pixels they were made from
    assert load_init_image(gray16, (16, 16), reader=1)[0].getpixel((0, 0)) == (255, 255, 255)
    assert load_init_image(rotated, (16, 32), reader=1)[0].getpixel((12, 4))[2] > 200  # as stored: blue right


def test_an_init_image_too_large_to_open_is_an_init_image_error(session, tmp_path, monkeypatch):
    from PIL import Image

    from studio.generation import InitImageError

    path = tmp_path / "bomb.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above 2000 pixels: 64×64 is a "bomb"
    with pytest.raises(
        InitImageError, match=r"init image .*bomb.png is too large \(4096 pixels.*downscale it"
    ):
        session.generate(GenerateRequest("a circle", steps=2, init_image=path))


@pytest.mark.parametrize(("family", "guidance"), [("demo", 4.0), ("sdxl", 5.0), ("sd1", 7.5), ("w32", 7.5)])
def test_a_request_without_guidance_gets_its_familys(session, monkeypatch, family, guidance):
    # one table (trainers.families) for generation and the trainer's previews
    from trainers.families import default_guidance

    monkeypatch.setattr(session.model, "family", family)
    assert default_guidance(family) == guidance
    assert session._resolved(GenerateRequest("a circle", steps=2)).guidance == guidance
