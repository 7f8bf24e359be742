"""The Generate page (AppTest) on a tiny random SD1-style pipeline: prompts with <name>, swaps, errors,
downloads with provenance, img2img, guides and replay."""

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from embeddings import Embedding, Store
from studio.app import context

APP = str(Path(__file__).resolve().parent.parent / "studio" / "app" / "main.py")


@pytest.fixture
def session(tiny_session, monkeypatch):
    monkeypatch.setattr(context, "generation_session", lambda spec: tiny_session)
    return tiny_session


@pytest.fixture
def store(tokensmith_home, tiny_session) -> Store:
    width = tiny_session.model.widths["emb_params"]
    s = Store.for_home(tokensmith_home)
    s.put(
        Embedding(
            "red-square", {"emb_params": torch.randn(2, width, generator=torch.Generator().manual_seed(0))}
        )
    )
    return s


def open_generate() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("views/generate.py").run()
    assert not at.exception, at.exception
    return at


def generate(at: AppTest, prompt: str, **settings) -> AppTest:
    at.text_area(key="gen_prompt").set_value(prompt)
    at.number_input(key="gen_seed").set_value(settings.get("seed", 3))
    at.slider(key="gen_steps").set_value(settings.get("steps", 3))
    for key, value in settings.get("extra", {}).items():
        at.text_input(key=key).set_value(value)
    at.button(key="gen_go").click().run()
    assert not at.exception, at.exception
    return at


def downloads(at: AppTest) -> list:
    return [d for d in at.get("download_button") if d.proto.label == "Download PNG"]


def provenance_of(png: bytes) -> dict:
    return json.loads(Image.open(io.BytesIO(png)).text["tokensmith"])


def test_insert_puts_a_library_trigger_into_the_prompt(session, store):
    at = open_generate()
    at.text_area(key="gen_prompt").set_value("a photo of")
    at.selectbox(key="gen_insert_name").set_value("red-square")
    at.button(key="gen_insert").click().run()
    assert at.text_area(key="gen_prompt").value == "a photo of <red-square>"


def test_generate_shows_images_with_provenance_and_png_download(session, store):
    at = generate(open_generate(), "a <red-square> on blue", seed=5)
    assert not at.error, [e.value for e in at.error]
    [image] = at.image
    assert image.proto.imgs[0].caption == "seed 5"
    png = at.session_state["gen_results"][0][0]
    prov = provenance_of(png)
    assert (prov["prompt"], prov["seed"], prov["steps"]) == ("a <red-square> on blue", 5, 3)
    assert prov["embeddings"][0]["name"] == "red-square"
    assert len(downloads(at)) == 1


def test_swaps_reach_the_engine(session, store):
    at = generate(open_generate(), "a square", extra={"gen_swaps": "square=<red-square>"})
    prov = provenance_of(at.session_state["gen_results"][0][0])
    assert prov["swaps"] == {"square": "<red-square>"}
    assert "<red-square>" in prov["prompt_as_run"]


def test_unknown_embedding_and_empty_prompt_are_clear_errors(session, store):
    at = generate(open_generate(), "a <red-sqare>")
    assert "unknown embedding <red-sqare>" in at.error[0].value
    assert "did you mean <red-square>" in at.error[0].value
    at = generate(open_generate(), "")
    assert "write a prompt first" in at.error[0].value


def test_several_images_and_a_guide(session, store):
    at = open_generate()
    at.number_input(key="gen_count").set_value(2)
    at.text_area(key="gen_guides").set_value("color=green,scale=0.8")
    generate(at, "a thing", seed=7)
    seeds = [provenance_of(png)["seed"] for png, _ in at.session_state["gen_results"]]
    assert seeds == [7, 8]
    assert provenance_of(at.session_state["gen_results"][0][0])["guides"] == ["color=green,scale=0.8"]
    at.text_area(key="gen_guides").set_value("colour-ish=green")
    at.button(key="gen_go").click().run()
    assert "unknown guide" in at.error[0].value


def test_img2img_keeps_the_init_image_for_replay(session, store, tokensmith_home):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 200, 0)).save(buffer, format="PNG")
    at = open_generate()
    at.file_uploader(key="gen_init").set_value([("init.png", buffer.getvalue(), "image/png")])
    generate(at, "a thing")
    prov = provenance_of(at.session_state["gen_results"][0][0])
    assert prov["strength"] == 0.6
    assert Path(prov["init_image"]["path"]).parent == tokensmith_home / "studio" / "init-images"


def test_replay_of_a_downloaded_png_is_pixel_identical(session, store):
    at = generate(open_generate(), "a <red-square>", seed=11)
    png = at.session_state["gen_results"][0][0]
    at.file_uploader(key="gen_replay_file").set_value([("made.png", png, "image/png")])
    at.run()
    at.button(key="gen_replay").click().run()
    assert not at.error, [e.value for e in at.error]
    assert "Pixel-identical" in at.success[0].value


def test_replay_of_a_plain_png_says_why_not(session, store):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    at = open_generate()
    at.file_uploader(key="gen_replay_file").set_value([("plain.png", buffer.getvalue(), "image/png")])
    at.run()
    assert "no tokensmith provenance" in at.error[0].value


def test_a_half_typed_swap_is_explained_at_the_field_and_keeps_the_page(session, store):
    at = generate(open_generate(), "a <red-square>", seed=5)
    at.text_input(key="gen_swaps").set_value("puppy").run()
    assert not at.exception, at.exception
    [error] = at.error
    assert "Swap 'puppy' is not WORD=<name>" in error.value and "--swap" not in error.value
    assert at.button(key="gen_go") is not None and len(downloads(at)) == 1  # button and results stay
    at.button(key="gen_go").click().run()
    assert "Fix the swaps first" in at.error[-1].value and len(downloads(at)) == 1


def test_an_unreadable_init_image_is_explained_and_keeps_the_button(session, store):
    at = open_generate()
    at.file_uploader(key="gen_init").set_value([("broken.png", b"not an image", "image/png")])
    at.run()
    assert "'broken.png' is not a readable image" in at.error[0].value and "_io." not in at.error[0].value
    assert at.button(key="gen_go") is not None


def test_strength_cannot_be_zero(session, store):
    at = open_generate()
    assert at.slider(key="gen_str").min > 0
    assert "0 keeps" not in at.slider(key="gen_str").label


def test_a_replay_error_names_the_uploaded_file(session, store):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    at = open_generate()
    at.file_uploader(key="gen_replay_file").set_value([("plain.png", buffer.getvalue(), "image/png")])
    at.run()
    assert at.error[0].value.startswith("'plain.png' has no tokensmith provenance")
    assert at.button(key="gen_go") is not None
