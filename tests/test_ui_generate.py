"""The Generate page (AppTest) on a tiny random SD1-style pipeline: prompts with <name>, swaps, errors,
downloads with provenance, img2img, guides and replay."""

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from embeddings import Embedding, Store

APP = str(Path(__file__).resolve().parent.parent / "studio" / "app" / "main.py")


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


def test_insert_puts_a_library_trigger_into_the_prompt(page_session, store):
    at = open_generate()
    at.text_area(key="gen_prompt").set_value("a photo of")
    at.selectbox(key="gen_insert_name").set_value("red-square")
    at.button(key="gen_insert").click().run()
    assert at.text_area(key="gen_prompt").value == "a photo of <red-square>"


def test_generate_shows_images_with_provenance_and_png_download(page_session, store):
    at = generate(open_generate(), "a <red-square> on blue", seed=5)
    assert not at.error, [e.value for e in at.error]
    [image] = at.image
    assert image.proto.imgs[0].caption == "seed 5"
    png = at.session_state["gen_results"][0][0]
    prov = provenance_of(png)
    assert (prov["prompt"], prov["seed"], prov["steps"]) == ("a <red-square> on blue", 5, 3)
    assert prov["embeddings"][0]["name"] == "red-square"
    assert len(downloads(at)) == 1


def test_swaps_reach_the_engine(page_session, store):
    at = generate(open_generate(), "a square", extra={"gen_swaps": "square=<red-square>"})
    prov = provenance_of(at.session_state["gen_results"][0][0])
    assert prov["swaps"] == {"square": "<red-square>"}
    assert "<red-square>" in prov["prompt_as_run"]


def test_unknown_embedding_and_empty_prompt_are_clear_errors(page_session, store):
    at = generate(open_generate(), "a <red-sqare>")
    assert "unknown embedding <red-sqare>" in at.error[0].value
    assert "did you mean <red-square>" in at.error[0].value
    at = generate(open_generate(), "")
    assert "write a prompt first" in at.error[0].value


def test_several_images_and_a_guide(page_session, store):
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


def test_img2img_keeps_the_init_image_for_replay(page_session, store, tokensmith_home):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 200, 0)).save(buffer, format="PNG")
    at = open_generate()
    at.file_uploader(key="gen_init").set_value([("init.png", buffer.getvalue(), "image/png")])
    generate(at, "a thing")
    prov = provenance_of(at.session_state["gen_results"][0][0])
    assert prov["strength"] == 0.6
    assert Path(prov["init_image"]["path"]).parent == tokensmith_home / "studio" / "init-images"


def test_a_transparent_init_upload_is_kept_on_the_training_gray(page_session, store, tokensmith_home):
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # transparent black around a red square
    image.paste((220, 30, 30, 255), (4, 4, 12, 12))
    at = open_generate()
    at.file_uploader(key="gen_init").set_value([("logo.png", png_of(image), "image/png")])
    generate(at, "a thing")
    prov = provenance_of(at.session_state["gen_results"][0][0])
    kept = Image.open(prov["init_image"]["path"])
    assert kept.getpixel((0, 0)) == (128, 128, 128) and kept.getpixel((8, 8)) == (220, 30, 30)


def test_one_image_of_a_grid_replays_in_the_studio(page_session, store):
    from studio.generation import GenerateRequest
    from studio.generation.grid import compose, sheet_cells
    from studio.generation.provenance import png_bytes
    from studio.generation.sheets import sheet_provenance

    request = GenerateRequest(prompt="a <red-square>", seed=5, steps=3, num_images=2)
    results = page_session.generate(request, store=store)
    cells = [[result.image for result in results]]
    grid = compose(cells, ["a <red-square>"], ["seed 5", "seed 6"])
    png = png_bytes(grid, sheet_provenance("grid", sheet_cells(cells, [results])))
    at = open_generate()
    at.file_uploader(key="gen_replay_file").set_value([("grid.png", png, "image/png")])
    at.run()
    at.number_input(key="gen_replay_cell").set_value(2).run()
    assert any("seed 6" in c.value for c in at.caption)  # the chosen image's provenance
    at.button(key="gen_replay").click().run()
    assert not at.exception and "Pixel-identical" in at.success[0].value
    assert [i.proto.imgs[0].caption for i in at.image][-2:] == ["uploaded, image 2", "replayed"]


def test_replay_of_a_downloaded_png_is_pixel_identical(page_session, store):
    at = generate(open_generate(), "a <red-square>", seed=11)
    png = at.session_state["gen_results"][0][0]
    at.file_uploader(key="gen_replay_file").set_value([("made.png", png, "image/png")])
    at.run()
    at.button(key="gen_replay").click().run()
    assert not at.error, [e.value for e in at.error]
    assert "Pixel-identical" in at.success[0].value


def test_replay_of_a_plain_png_says_why_not(page_session, store):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    at = open_generate()
    at.file_uploader(key="gen_replay_file").set_value([("plain.png", buffer.getvalue(), "image/png")])
    at.run()
    assert "no tokensmith provenance" in at.error[0].value


def test_a_half_typed_swap_is_explained_at_the_field_and_keeps_the_page(page_session, store):
    at = generate(open_generate(), "a <red-square>", seed=5)
    at.text_input(key="gen_swaps").set_value("puppy").run()
    assert not at.exception, at.exception
    [error] = at.error
    assert "Swap 'puppy' is not WORD=<name>" in error.value and "--swap" not in error.value
    assert at.button(key="gen_go") is not None and len(downloads(at)) == 1  # button and results stay
    at.button(key="gen_go").click().run()
    assert "Fix the swaps first" in at.error[-1].value and len(downloads(at)) == 1


def test_an_unreadable_init_image_is_explained_and_keeps_the_button(page_session, store):
    at = open_generate()
    at.file_uploader(key="gen_init").set_value([("broken.png", b"not an image", "image/png")])
    at.run()
    assert "cannot read init image 'broken.png': it is not an image" in at.error[0].value
    assert "_io." not in at.error[0].value
    assert at.button(key="gen_go") is not None


def test_strength_cannot_be_zero(page_session, store):
    at = open_generate()
    assert at.slider(key="gen_str").min > 0
    assert "0 keeps" not in at.slider(key="gen_str").label


def test_a_replay_error_names_the_uploaded_file(page_session, store):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    at = open_generate()
    at.file_uploader(key="gen_replay_file").set_value([("plain.png", buffer.getvalue(), "image/png")])
    at.run()
    assert at.error[0].value.startswith("'plain.png' has no tokensmith provenance")
    assert at.button(key="gen_go") is not None


# --- init images as a viewer sees them, and ones too large to open ---


def png_of(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_a_sixteen_bit_or_rotated_init_image_is_used_as_a_viewer_shows_it(page_session, store):
    gray16 = png_of(Image.fromarray(np.full((16, 16), 20000, dtype=np.uint16)))  # 31 % gray, I;16
    wide = np.zeros((16, 32, 3), dtype=np.uint8)  # stored wide, red left; EXIF 6: viewed tall, red on top
    wide[:, :16, 0], wide[:, 16:, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = png_of(Image.fromarray(wide), "JPEG", exif=exif)
    at = open_generate()
    kept = []
    for name, data in (("gray16.png", gray16), ("rot.jpg", rotated)):
        at.file_uploader(key="gen_init").set_value([(name, data, "image/png")])
        generate(at, "a thing")
        kept.append(Image.open(provenance_of(at.session_state["gen_results"][0][0])["init_image"]["path"]))
    assert kept[0].getpixel((0, 0)) == (78, 78, 78)  # 20000 / 257, not clipped to white
    assert kept[1].size == (16, 32) and kept[1].getpixel((8, 4))[0] > 200  # upright: red on top


def test_a_too_large_init_image_is_explained_and_keeps_the_button(page_session, store, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above 2000 pixels: 64×64 is a "bomb"
    at = open_generate()
    at.file_uploader(key="gen_init").set_value([("bomb.png", png_of(Image.new("L", (64, 64))), "image/png")])
    at.run()
    assert not at.exception, at.exception
    assert "init image 'bomb.png' is too large" in at.error[0].value and "downscale it" in at.error[0].value
    assert at.button(key="gen_go") is not None


def test_a_too_large_replay_upload_is_explained(page_session, store, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    at = open_generate()
    at.file_uploader(key="gen_replay_file").set_value(
        [("bomb.png", png_of(Image.new("L", (64, 64))), "image/png")]
    )
    at.run()
    assert not at.exception, at.exception
    assert "too large" in at.error[0].value and "DOS attack" not in at.error[0].value
    assert at.button(key="gen_go") is not None


def test_an_odd_shaped_init_image_says_it_is_stretched(page_session, store):
    at = open_generate()
    at.file_uploader(key="gen_init").set_value([("odd.png", png_of(Image.new("RGB", (37, 91))), "image/png")])
    at.run()
    [note] = [c.value for c in at.caption if "stretched" in c.value]
    assert "stretched to 16×16" in note and "37:91" in note  # the tiny model's native size
    at.number_input(key="gen_width").set_value(16)
    at.number_input(key="gen_height").set_value(40)
    at.run()
    assert not [c for c in at.caption if "stretched" in c.value]  # near enough its own shape


def test_a_large_init_image_is_decoded_once_per_upload(page_session, store, monkeypatch):
    from trainers import pictures

    calls = []
    read = pictures.read_picture
    monkeypatch.setattr(pictures, "read_picture", lambda *a, **k: calls.append(1) or read(*a, **k))
    at = open_generate()
    at.file_uploader(key="gen_init").set_value([("in.png", png_of(Image.new("RGB", (40, 30))), "image/png")])
    at.run()
    at.text_input(key="gen_negative").set_value("blurry").run()
    at.text_input(key="gen_negative").set_value("blurry, dark").run()
    assert len(calls) == 1
    at.file_uploader(key="gen_init").set_value([("other.png", png_of(Image.new("RGB", (8, 8))), "image/png")])
    at.run()
    assert len(calls) == 2


# --- guide code that fails, and the progress bar ---


def test_a_guide_module_with_a_syntax_error_is_explained_and_keeps_the_page(
    page_session, store, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "page_badmod", raising=False)
    (tmp_path / "page_badmod.py").write_text("import torch\ndef more_blue(image)\n    return image.mean()\n")
    at = open_generate()
    at.text_area(key="gen_guides").set_value("module=page_badmod:more_blue")
    generate(at, "a white circle")
    assert "page_badmod.py line 2: expected ':'" in at.error[0].value
    assert at.file_uploader(key="gen_replay_file") is not None  # the rest of the page is drawn


@pytest.mark.parametrize(
    "prompt, guide",
    [
        ("a <nope>", ""),  # refused before sampling
        # fails at the second sampling step, after the first one drew the bar (4 loss calls per step)
        ("a thing", "module=fails_later:f"),
    ],
)
def test_no_progress_bar_is_left_above_an_error(page_session, store, tmp_path, monkeypatch, prompt, guide):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "fails_later", raising=False)
    (tmp_path / "fails_later.py").write_text(
        "CALLS = []\n\ndef f(image):\n    CALLS.append(1)\n"
        "    if len(CALLS) > 4:\n        raise RuntimeError('broke at step 2')\n    return image.mean()\n"
    )
    at = open_generate()
    at.text_area(key="gen_guides").set_value(guide)
    generate(at, prompt)
    assert at.error and not at.get("progress"), [e.value for e in at.error]


def test_engine_messages_name_the_fields_not_cli_flags(page_session, store):
    at = open_generate()
    at.selectbox(key="gen_scheduler").set_value("pndm")
    generate(at, "a thing", steps=2)
    assert "raise Steps" in at.error[0].value and "--steps" not in at.error[0].value
    at = generate(open_generate(), "a <red-sqare>")
    assert "the Library page shows the stored names" in at.error[0].value
    assert "tokensmith list" not in at.error[0].value


# --- replay and download ---


def test_the_replay_result_stays_while_other_fields_change(page_session, store):
    at = generate(open_generate(), "a <red-square>", seed=11)
    png = at.session_state["gen_results"][0][0]
    at.file_uploader(key="gen_replay_file").set_value([("made.png", png, "image/png")])
    at.run()
    at.button(key="gen_replay").click().run()
    at.text_input(key="gen_negative").set_value("blurry").run()
    assert "Pixel-identical" in at.success[0].value
    assert [i.proto.imgs[0].caption for i in at.image][-2:] == ["uploaded", "replayed"]
    at.file_uploader(key="gen_replay_file").set_value(
        [("plain.png", png_of(Image.new("RGB", (8, 8))), "image/png")]
    )
    at.run()
    assert not at.success  # another upload: the earlier verdict is not shown for it


def test_the_download_is_named_by_prompt_and_seed(page_session, store, monkeypatch):
    import streamlit as st

    names = []
    button = st.download_button
    monkeypatch.setattr(
        st, "download_button", lambda *a, **k: names.append(k["file_name"]) or button(*a, **k)
    )
    generate(open_generate(), "A red circle, on blue!", seed=3)
    assert names == ["a-red-circle-on-blue-s3.png"]


def test_the_insert_list_marks_embeddings_made_for_another_model(page_session, store):
    store.put(Embedding("sd15-style", {"emb_params": torch.zeros(1, 768)}))  # SD 1.x width, not the tiny 32
    at = open_generate()
    assert at.selectbox(key="gen_insert_name").options == ["red-square", "sd15-style (not for this model)"]
    at.selectbox(key="gen_insert_name").set_value("sd15-style")
    at.button(key="gen_insert").click().run()
    assert at.text_area(key="gen_prompt").value == "<sd15-style>"  # the name itself, not the label


def test_the_partial_fit_box_lets_one_encoders_half_in_and_the_image_records_it(page_session, store):
    g = torch.Generator().manual_seed(1)
    xl = {"clip_l": torch.randn(1, 32, generator=g), "clip_g": torch.randn(1, 48, generator=g)}
    store.put(Embedding("xl-cat", xl, {"family": "sdxl"}))  # its clip_l half has the tiny SD1 model's width
    at = generate(open_generate(), "a <xl-cat>")
    assert "use the Partial fit box to use its clip_l half" in at.error[0].value and not downloads(at)
    at.checkbox(key="gen_partial").check()
    at = generate(at, "a <xl-cat>")
    assert not at.error and provenance_of(at.session_state["gen_results"][0][0])["partial"] == ["xl-cat"]
    assert page_session.encoder.partial is False  # the shared session is set for that request only


def test_a_refused_prompt_says_the_image_below_is_the_previous_prompts(page_session, store):
    at = generate(open_generate(), "a <red-square>", seed=5)
    at = generate(at, "a <no-such-thing>")
    assert at.error and "no-such-thing" in at.error[0].value
    assert "Below: the previous result, of 'a <red-square>'." in [c.value for c in at.caption]
    assert len(downloads(at)) == 1  # the earlier result stays, labelled
