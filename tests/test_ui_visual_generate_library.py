"""What the visual review found on Generate and the Library (AppTest, tiny random SD1-style pipeline): the
Insert list starts on an embedding that fits, the images show as they are made with a step total, small
images are enlarged with sharp pixels, one image's details are drawn once under the set, and the Library's
details list labelled facts (the raw header in an expander), short download labels and one picture a card."""

import io
import json
import re

import pytest
import torch
from apppage import open_page
from PIL import Image

from embeddings import Embedding, Store
from studio.app import cards
from studio.app.pictures import enlarged, first_tile

RED, BLUE = (220, 30, 30), (30, 30, 220)


def colours(image: Image.Image) -> set[tuple[int, ...]]:
    """The distinct RGB colours of an image."""
    return {colour for _count, colour in image.convert("RGB").getcolors(maxcolors=1 << 24)}


def emb(name: str, width: int, seed: int = 0, **meta) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    return Embedding(name, {"emb_params": torch.randn(1, width, generator=g)}, meta)


@pytest.fixture
def store(tokensmith_home, tiny_session) -> Store:
    """<red-square>, made for the tiny model, and <aaa-sd15>, made for SD 1.x (first alphabetically)."""
    s = Store.for_home(tokensmith_home)
    s.put(emb("red-square", tiny_session.model.widths["emb_params"]))
    s.put(emb("aaa-sd15", 768, seed=1))
    return s


def drawn_images(monkeypatch) -> list:
    """Every st.image call of the page from now on, as (image or images, width)."""
    import streamlit as st

    calls = []
    image = st.image
    monkeypatch.setattr(
        st, "image", lambda img, *a, **k: calls.append((img, k.get("width"))) or image(img, *a, **k)
    )
    return calls


def generate(at, prompt: str, *, count: int = 1):
    at.text_area(key="gen_prompt").set_value(prompt)
    at.number_input(key="gen_seed").set_value(3)
    at.slider(key="gen_steps").set_value(2)
    at.number_input(key="gen_count").set_value(count)
    at.button(key="gen_go").click().run()
    assert not at.exception, at.exception
    return at


def seen(markdown: str) -> str:
    """What a reader sees of Markdown the page draws (file and prompt text is drawn `cards.literal`)."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


def details_of(at) -> str:
    """The labelled facts under Generate's images, as read."""
    [details] = [seen(md.value) for md in at.markdown if md.value.startswith("**Prompt:**")]
    return details


# --- Generate ---


def test_the_insert_list_puts_what_fits_this_model_first_and_starts_on_it(page_session, store):
    at = open_page("views/generate.py")
    select = at.selectbox(key="gen_insert_name")
    assert select.options == ["red-square", "aaa-sd15 (not for this model)"]
    assert select.value == "red-square"  # Insert adds a trigger the page accepts


def test_several_results_are_one_set_with_one_details_panel_under_it(page_session, store):
    at = generate(open_page("views/generate.py"), "a <red-square>", count=2)
    assert not at.error, [e.value for e in at.error]
    [images] = at.image  # one element: it wraps, two a row on a phone
    assert [img.caption for img in images.proto.imgs] == ["seed 3", "seed 4"]
    assert [e.label for e in at.expander if e.label.startswith("Provenance")] == [
        "Provenance (JSON, as the PNG carries it)"
    ]  # once, full width, not one squeezed into each image's column
    assert [d.proto.label for d in at.get("download_button")] == ["Download PNG", "Download all 2 (.zip)"]
    details = details_of(at)
    assert (
        "**Seed:** 3" in details and "**Steps:** 2" in details and "**Embeddings:** <red-square> (" in details
    )
    at.selectbox(key="gen_details_of").set_value(1).run()
    assert "**Seed:** 4" in details_of(at)
    assert json.loads(at.json[0].value)["seed"] == 4


def test_the_details_draw_the_prompt_as_written(page_session, store):
    prompt = "a **bold** _red_ <red-square> `x` www.example.com"
    at = generate(open_page("views/generate.py"), prompt)
    [details] = [md.value for md in at.markdown if md.value.startswith("**Prompt:**")]
    assert details.startswith(f"**Prompt:** {cards.literal(prompt)}  \n")  # no bold, code or link


def test_each_image_shows_as_soon_as_it_is_made(page_session, store, monkeypatch):
    at = open_page("views/generate.py")
    calls = drawn_images(monkeypatch)
    shown = []  # how many images the page showed as each next one came out of the engine
    each_image = page_session.each_image

    def noted(*args, **kwargs):
        for result in each_image(*args, **kwargs):
            shown.append(max((len(img) for img, _width in calls if isinstance(img, list)), default=0))
            yield result

    monkeypatch.setattr(page_session, "each_image", noted)
    generate(at, "a <red-square>", count=3)
    assert shown == [0, 1, 2]  # not 0, 0, 0: all three at the end
    from studio.app.results import RESULT_SIDE

    widths = [width for img, width in calls if isinstance(img, list)]
    assert widths and set(widths) == {RESULT_SIDE}  # the first of three is drawn as small as the rest


def test_the_progress_bar_reads_each_step_against_its_total(page_session, store, monkeypatch):
    from streamlit.delta_generator import DeltaGenerator

    texts = []
    progress = DeltaGenerator.progress
    monkeypatch.setattr(
        DeltaGenerator,
        "progress",
        lambda self, value, text=None: texts.append(text) or progress(self, value, text),
    )
    generate(open_page("views/generate.py"), "a <red-square>", count=2)
    assert texts == [
        "image 1/2 · step 1/2",
        "image 1/2 · step 2/2",
        "image 2/2 · step 1/2",
        "image 2/2 · step 2/2",
    ]


def test_a_small_result_is_enlarged_by_a_whole_number_with_sharp_pixels(page_session, store, monkeypatch):
    calls = drawn_images(monkeypatch)
    at = generate(open_page("views/generate.py"), "a <red-square>")
    *_as_made, (pictures, width) = [(img, width) for img, width in calls if isinstance(img, list)]
    [picture] = pictures
    made = Image.open(io.BytesIO(at.session_state["gen_results"][0][0])).convert("RGB")
    scale = 384 // made.width
    assert scale > 1 and picture.size == (made.width * scale, made.height * scale) and width == picture.width
    assert picture.convert("RGB").tobytes() == made.resize(picture.size, Image.NEAREST).tobytes()


def test_the_empty_prompt_error_says_where_the_insert_button_is(page_session, store):
    at = open_page("views/generate.py")
    at.button(key="gen_go").click().run()
    [error] = [e.value for e in at.error]
    assert error == "write a prompt first (or pick a library embedding under the box and press Insert)"


# --- the enlargement shared by the pages ---


def test_enlarged_scales_by_the_largest_whole_number_that_fits():
    assert enlarged(Image.new("RGB", (32, 32))).size == (384, 384)
    assert enlarged(Image.new("RGB", (48, 32))).size == (384, 256)
    assert enlarged(Image.new("RGB", (100, 40)), at_most=256).size == (200, 80)
    large = Image.new("RGB", (512, 512))
    assert enlarged(large) is large and enlarged(Image.new("RGB", (200, 200))).size == (200, 200)


def test_enlarged_keeps_each_pixel_a_square_block():
    image = Image.new("RGB", (2, 1))
    image.putdata([RED, BLUE])
    big = enlarged(image, at_most=8)
    assert big.size == (8, 4)
    assert [big.getpixel((x, 0)) for x in range(8)] == [RED] * 4 + [BLUE] * 4


def test_first_tile_is_the_left_square_of_a_strip():
    strip = Image.new("RGB", (256, 32), BLUE)
    strip.paste(RED, (0, 0, 32, 32))
    tile = first_tile(strip)
    assert tile.size == (32, 32) and colours(tile) == {RED}
    square = Image.new("RGB", (40, 40))
    assert first_tile(square) is square


# --- the Library ---


@pytest.fixture
def library(tokensmith_home) -> Store:
    """<trained> with an 8-sample preview strip (the first sample red, the others blue) and training
    metrics; <imported> from an A1111 .pt, without a preview."""
    s = Store.for_home(tokensmith_home)
    strip = Image.new("RGB", (256, 32), BLUE)
    strip.paste(RED, (0, 0, 32, 32))
    metrics = {"val_loss": 0.24968, "best_val_loss": 0.24304, "best_val_step": 20}
    s.put(emb("trained", 8, init="red circle", steps="30", metrics=json.dumps(metrics)), preview=strip)
    s.put(emb("imported", 8, seed=1, source_file="neg.pt", source_format="pickle:a1111"))
    return s


def test_a_card_shows_the_first_sample_enlarged_and_a_card_without_one_a_placeholder(library, monkeypatch):
    calls = drawn_images(monkeypatch)
    at = open_page("views/library.py")
    assert not any(md.value.startswith("#") for md in at.markdown)  # no heading (with its anchor link)
    [(placeholder, w1), (picture, w2)] = calls  # imported, trained: listed by name
    assert placeholder.startswith("<svg") and w1 == w2 == cards.CARD_SIDE  # one height for every card
    assert picture.size == (cards.CARD_SIDE, cards.CARD_SIDE) and colours(picture) == {RED}


def test_the_details_list_labelled_facts_and_keep_the_raw_header_in_an_expander(library, monkeypatch):
    calls = drawn_images(monkeypatch)
    at = open_page("views/library.py", emb="trained")
    assert not at.dataframe
    [facts] = [md.value for md in at.markdown if md.value.startswith("**Model family:**")]
    assert facts.replace("\\", "").split("  \n") == [
        "**Model family:** width 8",
        '**Trained from:** "red circle"',
        "**Validation loss:** 0.2430 (best, at step 20; last 0.2497)",
        f"**Created:** {cards.created_text(library.entry('trained').meta['created'])}",
    ]
    assert "Raw metadata" in [e.label for e in at.expander]
    raw = json.loads(at.json[0].value)
    assert raw["metrics"]["best_val_step"] == 20 and raw["format"] == "pt"  # structures, not one line of text
    assert at.code[0].value == library.get("trained").sha256
    [strip] = [img for img, _width in calls if getattr(img, "size", None) == (512, 64)]  # twice its size
    assert strip.getpixel((63, 63)) == RED and strip.getpixel((64, 0)) == BLUE


def test_an_imported_embedding_says_from_which_file_and_format_and_not_format_pt(library):
    at = open_page("views/library.py", emb="imported")
    [facts] = [md.value for md in at.markdown if md.value.startswith("**Model family:**")]
    facts = facts.replace("\\", "")
    assert "**Imported from:** neg.pt (AUTOMATIC1111 .pt (string_to_param))" in facts
    assert "format" not in facts.lower()


def test_the_download_buttons_have_short_labels_and_say_what_each_is_for(library):
    at = open_page("views/library.py", emb="trained")
    buttons = at.get("download_button")
    assert [b.proto.label for b in buttons] == [
        ".safetensors (A1111, ComfyUI)",
        "diffusers",
        "A1111 .pt",
        "A1111 PNG",
    ]
    assert all(b.proto.help for b in buttons)


def test_created_reads_as_a_date_and_time():
    assert cards.created_text("2026-11-28T13:32:27+00:00") == "2026-11-28 13:32 UTC"
    assert cards.created_text("2026-11-28T13:32:27+01:00") == "2026-11-28 13:32 UTC+01:00"
    assert cards.created_text("yesterday") == "yesterday"


def test_validation_loss_reads_the_metrics_header():
    assert cards.validation_loss_text('{"val_loss": 0.5, "best_val_loss": 0.5, "best_val_step": 3}') == (
        "0.5000 (best, at step 3)"
    )
    assert cards.validation_loss_text('{"val_loss": 0.25}') == "0.2500"
    assert cards.validation_loss_text("not json") == cards.validation_loss_text("[1]") == ""
