"""Generate, the Lab and Blend (AppTest, tiny random SD1-style pipeline): a failure at a later image keeps the
images made before it, advice names each page's own fields, the Insert list is the Library's, and the forms
keep their values while another page is open."""

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from embeddings import Embedding, Store
from trainers.config import MAX_RESOLUTION

APP = str(Path(__file__).resolve().parent.parent / "studio" / "app" / "main.py")
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 139 GiB total capacity)"


@pytest.fixture
def store(tokensmith_home, tiny_session) -> Store:
    width = tiny_session.model.widths["emb_params"]
    s = Store.for_home(tokensmith_home)
    for seed, name in enumerate(["red-square", "blue-dot"]):
        vectors = torch.randn(1, width, generator=torch.Generator().manual_seed(seed))
        s.put(Embedding(name, {"emb_params": vectors}))
    return s


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def away_and_back(at: AppTest, page: str) -> AppTest:
    """Open the Library, then `page` again: Streamlit drops the state of widgets a run did not draw."""
    at.switch_page("views/library.py").run()
    assert not at.exception, at.exception
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def out_of_memory_at_call(page_session, monkeypatch, call: int) -> None:
    """Sampling runs out of memory at its `call`-th image (1-based), as a GPU would."""
    calls = []
    real = page_session._sample

    def sample(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise torch.OutOfMemoryError(OOM)
        return real(*args, **kwargs)

    monkeypatch.setattr(page_session, "_sample", sample)


def downloads(at: AppTest) -> list:
    return [d for d in at.get("download_button") if d.proto.label == "Download PNG"]


# --- a failure part-way through ---


def test_a_failure_at_a_later_image_keeps_the_images_made_before_it(page_session, store, monkeypatch):
    out_of_memory_at_call(page_session, monkeypatch, 2)
    at = open_page("views/generate.py")
    at.text_area(key="gen_prompt").set_value("a red circle")
    at.number_input(key="gen_seed").set_value(3)
    at.slider(key="gen_steps").set_value(2)
    at.number_input(key="gen_count").set_value(3)
    at.text_area(key="gen_guides").set_value("color=green")
    at.button(key="gen_go").click().run()
    assert not at.exception, at.exception
    [error] = [e.value for e in at.error]
    assert error.startswith("generating a 16x16 image ran out of memory (")
    assert error.endswith("(1 of 3 images were made, shown below: seed 3; Seed 4, Images 2 makes the rest)")
    assert "fewer loss guides (Loss guides:" in error and "--" not in error  # the page's fields, no flags
    assert [prov["seed"] for _png, prov in at.session_state["gen_results"]] == [3]
    assert len(downloads(at)) == 1 and [i.proto.imgs[0].caption for i in at.image] == ["seed 3"]
    assert not [c for c in at.caption if c.value.startswith("Below: the previous result")]


def test_a_failure_at_the_first_image_keeps_the_previous_result_labelled(page_session, store, monkeypatch):
    at = open_page("views/generate.py")
    at.text_area(key="gen_prompt").set_value("a <red-square>")
    at.slider(key="gen_steps").set_value(2)
    at.button(key="gen_go").click().run()
    out_of_memory_at_call(page_session, monkeypatch, 1)
    at.text_area(key="gen_prompt").set_value("a blue dot")
    at.number_input(key="gen_count").set_value(2)
    at.button(key="gen_go").click().run()
    [error] = [e.value for e in at.error]
    assert "ran out of memory" in error and "images were made" not in error
    assert "Below: the previous result, of 'a <red-square>'." in [c.value for c in at.caption]
    assert len(downloads(at)) == 1


# --- the Lab's advice ---


@pytest.mark.parametrize("tab", ["lab_trace", "lab_guide"])
def test_the_lab_s_out_of_memory_advice_offers_no_size_it_cannot_set(page_session, store, monkeypatch, tab):
    out_of_memory_at_call(page_session, monkeypatch, 1)
    at = open_page("views/lab.py")
    at.number_input(key=f"{tab}_steps").set_value(2)
    at.button(key=f"{tab}_go").click().run()
    assert not at.exception, at.exception
    [error] = [e.value for e in at.error]
    assert error.startswith(f"sampling ran out of memory ({OOM}); the Lab samples at the model's native size")
    assert "Width" not in error and "--" not in error and "fewer loss guides" not in error


# --- Generate's Insert list and size ---


def test_the_insert_list_offers_only_what_the_library_lists(page_session, store):
    (store.root / "text.safetensors").write_bytes(b"abcdef")  # too short for a safetensors file: skipped
    at = open_page("views/generate.py")
    assert at.selectbox(key="gen_insert_name").options == ["blue-dot", "red-square"]


def test_width_and_height_go_as_far_as_the_cli_allows(page_session, store):
    at = open_page("views/generate.py")
    assert at.number_input(key="gen_width").max == at.number_input(key="gen_height").max == MAX_RESOLUTION
    assert MAX_RESOLUTION == 4096  # what the README and `tokensmith generate --width` say


# --- form values while another page is open ---


GENERATE_FORM = {
    ("text_area", "gen_prompt"): "a <red-square> on blue",
    ("text_input", "gen_negative"): "blurry",
    ("number_input", "gen_seed"): 7,
    ("slider", "gen_steps"): 3,
    ("number_input", "gen_guidance"): 6.5,
    ("selectbox", "gen_scheduler"): "euler",
    ("number_input", "gen_width"): 24,
    ("number_input", "gen_height"): 40,
    ("number_input", "gen_count"): 2,
    ("text_input", "gen_swaps"): "square=<red-square>",
    ("checkbox", "gen_partial"): True,
    ("slider", "gen_str"): 0.8,
    ("text_area", "gen_guides"): "color=green",
    ("selectbox", "gen_insert_name"): "red-square",
}
LAB_FORM = {
    ("selectbox", "lab_sched"): "euler",
    ("slider", "lab_sched_steps"): 9,
    ("text_input", "lab_trace_prompt"): "a green square",
    ("number_input", "lab_trace_seed"): 4,
    ("number_input", "lab_trace_steps"): 5,
    ("slider", "lab_trace_cols"): 3,
    ("text_input", "lab_guide_prompt"): "a blue dot",
    ("number_input", "lab_guide_seed"): 8,
    ("number_input", "lab_guide_steps"): 6,
    ("text_input", "lab_guide_spec"): "brightness=0.8",
}
INSPECT_FORM = {("text_input", "insp_words"): "green, star", ("slider", "insp_k"): 5}
BLEND_FORM = {
    ("number_input", "bl_count"): 3,
    ("radio", "bl_kind_0"): "word",
    ("text_input", "bl_word_0"): "typewriter",
    ("selectbox", "bl_emb_1"): "red-square",
    ("slider", "bl_w_2"): 0.5,
    ("toggle", "bl_keep_norm"): True,
    ("text_input", "bl_name"): "mix",
    ("text_input", "bl_prompt"): "a * on a mat",
    ("text_input", "bl_seeds"): "4",
    ("number_input", "bl_steps"): 3,
    ("toggle", "bl_sweep"): True,
}


def fill(at: AppTest, form: dict) -> None:
    """Set every field of `form`, one run each (a later field may appear only after an earlier one)."""
    for (kind, key), value in form.items():
        getattr(at, kind)(key=key).set_value(value).run()
        assert not at.exception, at.exception


def values(at: AppTest, form: dict) -> dict:
    return {key: getattr(at, kind)(key=key).value for kind, key in form}


@pytest.mark.parametrize(
    "page, form",
    [("views/generate.py", GENERATE_FORM), ("views/lab.py", LAB_FORM), ("views/inspect.py", INSPECT_FORM)],
    ids=["generate", "lab", "inspect"],
)
def test_form_values_survive_a_visit_to_another_page(page_session, store, page, form):
    at = open_page(page)
    fill(at, form)
    assert values(at, form) == {key: value for (_kind, key), value in form.items()}
    at = away_and_back(at, page)
    assert values(at, form) == {key: value for (_kind, key), value in form.items()}


def test_blend_values_survive_a_visit_to_another_page(page_session, store):
    at = open_page("views/blend.py")
    fill(at, BLEND_FORM)
    at = away_and_back(at, "views/blend.py")
    assert values(at, BLEND_FORM) == {key: value for (_kind, key), value in BLEND_FORM.items()}
    assert at.slider(key="bl_w_0").value == 0.33  # the count's fresh weights, not reset by the visit


def test_generate_s_result_and_prompt_are_both_there_after_a_visit(page_session, store):
    at = open_page("views/generate.py")
    at.text_area(key="gen_prompt").set_value("a <red-square>")
    at.slider(key="gen_steps").set_value(2)
    at.button(key="gen_go").click().run()
    at = away_and_back(at, "views/generate.py")
    assert at.text_area(key="gen_prompt").value == "a <red-square>" and len(downloads(at)) == 1


def test_a_kept_choice_that_is_gone_gives_way_to_the_first(page_session, store):
    at = open_page("views/generate.py")
    at.selectbox(key="gen_insert_name").set_value("red-square").run()
    at.switch_page("views/library.py").run()
    store.delete("red-square")  # e.g. deleted on the Library page meanwhile
    at.switch_page("views/generate.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="gen_insert_name").value == "blue-dot"


def test_the_uploaders_say_that_an_upload_is_not_kept(page_session, store):
    at = open_page("views/generate.py")
    for key in ("gen_init", "gen_replay_file"):
        assert "not kept while another page is open" in at.file_uploader(key=key).help


TRAIN_FORM = {
    ("text_input", "folder"): "/data/cats",
    ("text_input", "name"): "my-cat",
    ("text_input", "init"): "a cat",
    ("number_input", "vectors"): 3,
    ("number_input", "steps"): 40,
    ("number_input", "lr"): 0.01,
    ("radio", "kind"): "a style",
    ("number_input", "every"): 5,
    ("toggle", "early"): False,
    ("toggle", "keep_best"): False,
    ("toggle", "checkpointing"): True,
}


def test_train_form_values_survive_a_visit_to_another_page(tokensmith_home):
    at = open_page("views/train.py")
    fill(at, TRAIN_FORM)
    at = away_and_back(at, "views/train.py")
    assert values(at, TRAIN_FORM) == {key: value for (_kind, key), value in TRAIN_FORM.items()}
    assert "not kept while another page is open" in at.file_uploader(key="images").help
