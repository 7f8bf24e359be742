"""The Lab and Inspect pages (AppTest, tiny random pipeline) and the map's projection."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from streamlit.testing.v1 import AppTest

from embeddings import Embedding, Store
from studio.app import context
from studio.app.embedding_map import map_points, project_2d

APP = str(Path(__file__).resolve().parent.parent / "studio" / "app" / "main.py")


@pytest.fixture
def store(cat_dog_store) -> Store:
    return cat_dog_store


def open_page(page: str, state: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


# --- Lab ---


def test_schedule_tab_lists_the_visited_timesteps(page_session):
    at = open_page("views/lab.py")
    assert not at.error, [e.value for e in at.error]
    at.slider(key="lab_sched_steps").set_value(7).run()
    table = at.dataframe[0].value
    assert len(table) == 7
    assert table["timestep"].is_monotonic_decreasing
    assert (table["sigma"] ** 2 + table["alpha_bar"]).round(6).eq(1.0).all()  # σ² + ᾱ = 1
    assert at.get("download_button")[0].proto.label == "Download the plot"


def test_trace_tab_makes_a_strip_of_the_chosen_steps(page_session, store):
    import io

    from PIL import Image

    at = open_page("views/lab.py")
    at.number_input(key="lab_trace_steps").set_value(4)
    at.slider(key="lab_trace_cols").set_value(3)
    at.button(key="lab_trace_go").click().run()
    strip, final = at.session_state["lab_trace"]
    strip_image, final_image = Image.open(io.BytesIO(strip)), Image.open(io.BytesIO(final))
    assert strip_image.width > 3 * final_image.width  # three columns of enlarged cells plus labels


def test_guide_tab_compares_the_same_seed_with_and_without(page_session, store):
    at = open_page("views/lab.py")
    at.number_input(key="lab_guide_steps").set_value(3)
    at.button(key="lab_guide_go").click().run()
    plain, guided, spec = at.session_state["lab_guide"]
    assert spec == "color=green" and plain != guided
    assert sum("color=green loss" in c.value for c in at.caption) == 2
    at.text_input(key="lab_guide_spec").set_value("sparkle=3")
    at.button(key="lab_guide_go").click().run()
    assert "unknown guide" in at.error[0].value


def test_an_empty_prompt_is_refused_in_the_lab_as_in_generate(page_session, store):
    for tab in ("lab_trace", "lab_guide"):
        at = open_page("views/lab.py")
        at.text_input(key=f"{tab}_prompt").set_value("  ")
        at.button(key=f"{tab}_go").click().run()
        assert [e.value for e in at.error] == ["write a prompt first"]
        assert tab not in at.session_state


def test_a_schedule_error_names_the_tab_s_field_not_a_cli_flag(page_session, store):
    at = open_page("views/lab.py")
    at.selectbox(key="lab_sched").set_value("pndm")
    at.slider(key="lab_sched_steps").set_value(2).run()
    assert "raise Sampling steps" in at.error[0].value and "--steps" not in at.error[0].value


# --- Inspect ---


def test_inspect_shows_neighbours_norms_and_the_map(page_session, store):
    at = open_page("views/inspect.py")
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="insp_name").value == "cat"
    neighbours = at.dataframe[0].value
    assert list(neighbours.columns) == ["<cat>", "<cat>_1"] and len(neighbours) == 8  # as nearest names them
    assert any("vocabulary mean" in c.value for c in at.caption)
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")


def test_inspect_reads_as_tokensmith_nearest_prints(page_session, store):
    """Columns named by the vectors' tokens, cosines to 3 decimals, norms in words (no Python lists)."""
    import re

    at = open_page("views/inspect.py")
    table = at.dataframe[0].value
    assert all(re.fullmatch(r".+ \(-?\d\.\d{3}\)", cell) for cell in [*table["<cat>"], *table["<cat>_1"]])
    [norms] = [c.value for c in at.caption if c.value.startswith("norms ")]
    assert re.fullmatch(
        r"norms <cat> [\d.]+, <cat>_1 [\d.]+ · vocabulary mean [\d.]+ ± [\d.]+ \(min [\d.]+, max [\d.]+\)"
        r" · ratio to the mean [\d.]+, [\d.]+",
        norms,
    ), norms


def test_a_map_click_or_the_url_selects_the_embedding(page_session, store):
    at = open_page("views/inspect.py", {"insp_clicked": "dog"})
    assert at.selectbox(key="insp_name").value == "dog"


def test_a_map_click_selects_once_and_the_selectbox_wins_afterwards(page_session, store, monkeypatch):
    import streamlit

    clicked = SimpleNamespace(selection={"pick": [{"name": "dog"}]})  # a chart keeps its selection on reruns
    monkeypatch.setattr(streamlit, "altair_chart", lambda *args, **kwargs: clicked)
    at = open_page("views/inspect.py")
    assert at.selectbox(key="insp_name").value == "dog"
    at.selectbox(key="insp_name").set_value("cat").run()
    assert at.selectbox(key="insp_name").value == "cat"
    at.run()
    assert at.selectbox(key="insp_name").value == "cat"


def test_an_unreadable_store_file_is_named_and_the_map_still_shows(page_session, store):
    (store.root / "broken.safetensors").write_bytes(b"\x00garbage")
    at = open_page("views/inspect.py")
    assert not at.error, [e.value for e in at.error]
    warning = " ".join(w.value for w in at.warning)
    assert (
        "broken.safetensors" in warning
        and "Move it to the trash" in warning
        and "tokensmith doctor" not in warning
    )
    assert at.selectbox(key="insp_name").options == ["cat", "dog"]
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")


def test_an_embedding_for_another_model_is_explained_and_the_map_still_shows(page_session, store):
    store.put(Embedding("wide", {"emb_params": torch.zeros(1, 1024)}, {}))
    at = open_page("views/inspect.py")
    at.selectbox(key="insp_name").set_value("wide").run()
    assert at.error, "no explanation for a width mismatch"
    assert "this model is SD 1.x" in at.error[0].value  # the model's family, not only its width
    captions = [c.value.replace("\\", "") for c in at.caption]  # drawn literal: Markdown escaped
    assert any(c.startswith("not on the map: 1 embedding made for another model") for c in captions), captions


def test_a_partial_fit_shows_the_half_that_fits_with_a_note(tokensmith_home, monkeypatch):
    """As `tokensmith nearest`: an SD 1.x-style embedding on SDXL shows its clip_l neighbours."""
    from trainers.models import LoadedModel
    from trainers.tiny import tiny_pipeline

    xl = LoadedModel(tiny_pipeline("sdxl"), "sdxl", "tiny-sdxl")
    monkeypatch.setattr(context, "loaded_model", lambda spec: xl)
    vectors = torch.randn(2, xl.widths["clip_l"], generator=torch.Generator().manual_seed(0))
    Store.for_home(tokensmith_home).put(Embedding("sd1ish", {"emb_params": vectors}))
    at = open_page("views/inspect.py")
    assert not at.error, [e.value for e in at.error]
    [table] = at.dataframe
    assert list(table.value.columns) == ["<sd1ish>", "<sd1ish>_1"]
    assert [m.value for m in at.markdown if m.value.startswith("**clip")] == [
        "**clip_l** · 2 vector(s) · width 32"
    ]
    [note] = [i.value for i in at.info if "only partly" in i.value]
    assert note.startswith("<sd1ish> fits this model only partly: clip_g would get zero vectors")
    assert "Partial fit box on the Generate page" in note and "--partial" not in note
    kinds = [type(n).__name__ for n in at.main]
    assert kinds.index("Info") < kinds.index("Dataframe")  # the note says which half the table shows


def test_the_caption_has_no_trailing_separator_without_lineage(page_session, store):
    store.put(Embedding("plain", {"emb_params": torch.ones(1, page_session.model.widths["emb_params"])}))
    at = open_page("views/inspect.py", {"insp_name": "plain"})
    captions = [c.value for c in at.caption]
    assert any(c.endswith(" · 1 vector") for c in captions)  # 'SD 1.x · 1 vector', not '... · 1 vector · '
    assert not any(c.rstrip().endswith("·") for c in captions)


def test_not_on_the_map_notes_are_in_the_studio_s_words(page_session, store):
    store.put(Embedding("xl", {"clip_l": torch.zeros(1, 768), "clip_g": torch.ones(1, 1280)}))
    at = open_page("views/inspect.py")
    captions = [c.value.replace("\\", "") for c in at.caption]  # drawn literal: Markdown escaped
    [note] = [c for c in captions if c.startswith("not on the map: 1 embedding")]
    assert "['" not in note and "--partial" not in note
    assert "SD 1.x" in note  # the model as its family names it (on the demo world: "the demo world")


def test_a_zero_vector_says_so_and_the_table_keeps_its_shape(page_session, store):
    width = page_session.model.widths["emb_params"]
    padded = torch.cat(
        [torch.randn(1, width, generator=torch.Generator().manual_seed(5)), torch.zeros(1, width)]
    )
    store.put(Embedding("padded", {"emb_params": padded}))
    at = open_page("views/inspect.py", {"insp_name": "padded"})
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert list(table.columns) == ["<padded>", "<padded>_1"] and len(table) == 8
    assert list(table["<padded>_1"]) == ["(a zero vector: no direction)"] + [""] * 7


def test_an_entry_that_does_not_load_is_explained_and_the_map_still_shows(page_session, store, monkeypatch):
    from embeddings import StoreError

    def entry(self, name):
        raise StoreError(f"'{name}' went away")  # e.g. removed by the CLI between the listing and this look

    monkeypatch.setattr(Store, "entry", entry)
    at = open_page("views/inspect.py")
    assert "'cat' went away" in at.error[0].value
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")


def test_project_2d_separates_distinct_points_and_keeps_order():
    rows = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    coords = project_2d(rows)  # (3, 2)
    assert coords.shape == (3, 2)
    xs = coords[:, 0].tolist()
    assert sorted(xs) == xs or sorted(xs, reverse=True) == xs  # collinear points stay in line, in order
    assert torch.allclose(coords[:, 1], torch.zeros(3), atol=1e-5)
    assert project_2d(rows[:1]).tolist() == [[0.0, 0.0]]


def test_map_points_places_embeddings_and_words(page_session, store):
    points, skipped = map_points(
        [store.get("cat"), store.get("dog")], ["red", "circle"], page_session.model.encoders
    )
    assert [(p.name, p.kind) for p in points] == [
        ("cat", "embedding"), ("dog", "embedding"), ("red", "word"), ("circle", "word")
    ]  # fmt: skip
    assert skipped == []


def test_a_bad_schedule_choice_leaves_the_other_tabs_working(page_session, store):
    at = open_page("views/lab.py")
    at.selectbox(key="lab_sched").set_value("pndm")
    at.slider(key="lab_sched_steps").set_value(2).run()
    assert not at.exception, at.exception
    assert "at least 4 steps" in at.error[0].value
    assert at.button(key="lab_trace_go") is not None and at.button(key="lab_guide_go") is not None


def test_the_schedule_tab_lists_heun_once_per_step(page_session):
    at = open_page("views/lab.py")
    at.selectbox(key="lab_sched").set_value("heun")
    at.slider(key="lab_sched_steps").set_value(5).run()
    assert len(at.dataframe[0].value) == 5
    assert any("5 sampling steps take 9 model evaluations" in c.value for c in at.caption)
