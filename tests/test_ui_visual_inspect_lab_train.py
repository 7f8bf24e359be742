"""What the visual review found on Inspect, Lab and Train, as far as AppTest sees it: the defaults and marks
of lists, the words of labels and bars, what sits inside an expander, the size a small image is shown at, and
the drawn height of a sheet's labels (a browser shows the rest: tests/test_browser_studio.py)."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.delta_generator import DeltaGenerator
from streamlit.testing.v1 import AppTest

from embeddings import Embedding, Store
from tests.apppage import APP, open_page
from tests.trainpage import open_train, run_folder

# --- helpers ---


@pytest.fixture
def store(cat_dog_store) -> Store:
    """<cat> and <dog> for the tiny model; <aaa-wide> (SD 2.x's width) is first by name, for another model."""
    cat_dog_store.put(Embedding("aaa-wide", {"emb_params": torch.ones(1, 1024)}, {}))
    return cat_dog_store


@pytest.fixture
def shown_images(monkeypatch) -> list[Image.Image]:
    """Every image a page hands to st.image (or a column's .image), as PIL images: the size it is sent at."""
    import streamlit

    seen: list[Image.Image] = []
    original = DeltaGenerator.image

    def record(self, image, *args, **kwargs):
        seen.append(image if isinstance(image, Image.Image) else Image.open(io.BytesIO(image)))
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "image", record)
    monkeypatch.setattr(streamlit, "image", lambda *a, **k: record(streamlit._main, *a, **k))
    return seen


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in [*at.get("arrow_vega_lite_chart"), *at.get("vega_lite_chart")]]


def unescaped(at: AppTest) -> list[str]:
    return [c.value.replace("\\", "") for c in at.caption]  # literal captions escape Markdown


# --- Inspect (A2, A4, A7, B8) ---


def test_inspect_opens_on_an_embedding_that_fits_and_marks_the_others(page_session, store):
    at = open_page("views/inspect.py")
    pick = at.selectbox(key="insp_name")
    assert pick.value == "cat"  # not <aaa-wide>, first by name but made for another model
    assert pick.options == ["cat", "dog", "aaa-wide (not for this model)"]
    assert not at.error, [e.value for e in at.error]


def test_embeddings_for_other_models_share_one_caption(page_session, store):
    store.put(Embedding("bbb-wide", {"emb_params": torch.ones(1, 1024)}, {}))
    at = open_page("views/inspect.py")
    notes = [c for c in unescaped(at) if c.startswith("not on the map")]
    assert len(notes) == 1 and notes[0].startswith("not on the map: 2 embeddings made for other models")
    assert "width 1024" not in notes[0]  # not the long sentence of each file


def test_a_single_encoder_table_is_not_headed_by_its_internal_key(page_session, store):
    at = open_page("views/inspect.py")
    headings = [m.value for m in at.markdown if "vector(s) · width" in m.value]
    assert headings == ["2 vector(s) · width 32"]
    assert not any("emb_params" in m.value for m in at.markdown)


def test_the_neighbour_table_is_ranked_from_1_and_explained(page_session, store):
    at = open_page("views/inspect.py")
    table = at.dataframe[0].value
    assert list(table.index) == list(range(1, 9)) and table.index.name == "rank"
    assert any("a piece of a longer word" in c.value and "cosine similarity" in c.value for c in at.caption)


def test_the_map_legend_is_below_and_the_norm_bars_lie_across(page_session, store):
    at = open_page("views/inspect.py")
    specs = chart_specs(at)
    legends = [
        layer["encoding"]["color"].get("legend")
        for spec in specs
        for layer in spec.get("layer", [])
        if "color" in layer.get("encoding", {})
    ]
    assert {"orient": "bottom"} in legends
    [bars] = [s for s in specs if s.get("mark", {}).get("type") == "bar" or s.get("mark") == "bar"]
    assert bars["encoding"]["y"]["field"] == "vector"  # names on the left, read across


def test_doctor_warnings_say_the_studio_s_control_and_no_internal_key():
    from studio.app import context

    said = (
        "{key}: a vector is 4.01x the vocabulary's mean norm; it may overpower the rest of a prompt (try a "
        "lower weight or a blend with --keep-norm)"
    )
    single = context.studio_text(said.format(key="emb_params"), fields=context.DOCTOR_FIELDS)
    assert single == (
        "a vector is 4.01x the vocabulary's mean norm; it may overpower the rest of a prompt (try a lower "
        "weight or a blend with “Keep the operands' norm” on the Blend page)"
    )
    xl = context.studio_text(said.format(key="clip_g"), fields=context.DOCTOR_FIELDS)
    assert xl.startswith("clip_g: a vector is") and "--keep-norm" not in xl
    assert context.DOCTOR_FIELDS["--partial"] == context.GENERATE_FIELDS["--partial"]


# --- Lab (A6, A7, B6) ---


def test_the_schedule_figure_is_in_an_expander_with_its_download(page_session):
    at = open_page("views/lab.py")
    [plot] = [e for e in at.expander if "tokensmith schedule" in e.label]
    assert [b.proto.label for b in plot.get("download_button")] == ["Download the plot"]
    assert not plot.proto.expanded


def test_the_schedule_chart_and_table_speak_as_the_figure(page_session):
    at = open_page("views/lab.py")
    [line] = [s for s in chart_specs(at) if "ᾱ_t (signal kept)" in json.dumps(s, ensure_ascii=False)]
    colour = json.dumps(line, ensure_ascii=False)
    assert colour.index('"#1f77b4"') < colour.index('"#ff7f0e"')  # ᾱ blue, σ orange, as the figure
    scale = next(
        e["color"]["scale"]
        for e in [line.get("encoding", {})] + [lay.get("encoding", {}) for lay in line.get("layer", [])]
        if "color" in e
    )
    assert scale["domain"] == ["ᾱ_t (signal kept)", "σ_t (noise std)"]
    assert scale["range"] == ["#1f77b4", "#ff7f0e"]
    columns = json.loads(at.dataframe[0].proto.columns)
    assert columns["alpha_bar"]["label"] == "ᾱ (signal kept)"
    assert columns["evaluated_at"]["label"] == "model runs at t"


def test_the_trace_s_final_image_is_enlarged_crisply_before_the_browser_sees_it(page_session, shown_images):
    at = open_page("views/lab.py")
    at.number_input(key="lab_trace_steps").set_value(3)
    at.slider(key="lab_trace_cols").set_value(2)
    at.button(key="lab_trace_go").click().run()
    _strip, final = at.session_state["lab_trace"]
    native = Image.open(io.BytesIO(final))
    [shown] = [image for image in shown_images if image.width == 192]
    factor = 192 // native.width
    assert shown.size == (native.width * factor, native.height * factor) and factor > 1
    pixels = np.asarray(shown.convert("RGB"))
    assert np.array_equal(pixels, np.asarray(native.convert("RGB")).repeat(factor, 0).repeat(factor, 1))


def test_the_guide_tab_reports_the_guide_s_own_measure(page_session, shown_images):
    at = open_page("views/lab.py")
    at.number_input(key="lab_guide_steps").set_value(2)
    at.text_input(key="lab_guide_spec").set_value("color=red")
    at.button(key="lab_guide_go").click().run()
    said = [c.value for c in at.caption if c.value.startswith("R ")]
    assert len(said) == 2 and all("color=red loss" in c for c in said) and not any("green" in c for c in said)
    assert sorted(image.width for image in shown_images[-2:]) == [384, 384]


# --- grid and strip labels (A7) ---


def ink_height(sheet: Image.Image, box: tuple[int, int, int, int]) -> int:
    """How many pixel rows in `box` hold any ink (not white)."""
    area = np.asarray(sheet.crop(box).convert("L"))
    rows = np.where((area < 200).any(axis=1))[0]
    return int(rows.max() - rows.min() + 1) if rows.size else 0


def test_grid_labels_are_drawn_at_a_readable_size_scaled_to_the_cell():
    from studio.generation.grid import LABEL, ROW_LABEL_W, compose

    small = compose([[Image.new("RGB", (32, 32), "red")]], ["w"], ["seed 0"])
    tall = ink_height(small, (ROW_LABEL_W, 0, small.width, LABEL))
    assert tall >= 11  # 'seed 0' in PIL's bitmap font is 8 px: 3 px on a phone
    big = compose([[Image.new("RGB", (512, 512), "red")]], ["w"], ["seed 0"])
    left, top = big.width - 512, big.height - 512  # the label column and band, scaled with the cell
    assert ink_height(big, (left, 0, big.width, top)) >= 3.5 * tall


# --- Train (A6, B1, B3, B9) ---


def test_the_train_form_keeps_short_placeholders_and_says_the_rest_in_help():
    at = open_train()
    folder, init = at.text_input(key="folder"), at.text_input(key="init")
    assert folder.placeholder == "/path/to/images" and "NAME.txt" in folder.help
    assert (
        init.placeholder == "red circle or <stored-name>" and "Empty: the model family's default" in init.help
    )


def test_thumbnails_come_right_after_the_uploader_without_captions():
    from tests.trainpage import png

    at = open_train()
    at.file_uploader(key="images").set_value(
        [(f"purple-triangle-{i}.png", png(), "image/png") for i in range(3)]
    )
    at.run()
    shown = [e for e in at.main if type(e).__name__ in ("Image", "TextInput")]
    assert [type(e).__name__ for e in shown][:4] == [
        "Image",
        "Image",
        "Image",
        "TextInput",
    ]  # then the folder
    assert shown[3].key == "folder" and not any(image.proto.imgs[0].caption for image in shown[:3])


def _state(**fields):
    from studio.runview import RunState

    return RunState(**fields)


def test_a_starting_job_says_what_the_trainer_prepares():
    from studio.app.trainjobs import progress_text

    notes = ["training on 4 image(s) from /somewhere/images"]
    assert progress_text(_state(status="starting", notes=notes), total=40) == (
        "preparing: loading the model and caching 4 image(s) (step 0 of 40)"
    )
    assert progress_text(_state(status="starting")) == "preparing: loading the model and caching the images"


def test_the_preview_score_is_named_and_a_finished_run_s_is_its_kept_step_s():
    from studio.app.trainjobs import progress_text

    rows = [{"step": s, "total": 40, "loss": 0.2, "metric": 100.0 - s} for s in (10, 20, 30, 40)]
    running = progress_text(_state(status="running", step=40, total=40, loss=0.2, metric=60.0, history=rows))
    assert running.endswith("· preview distance 60 (lower is better)") and "metric" not in running
    done = _state(status="done", step=40, total=40, loss=0.2, metric=70.0, kept_step=30, history=rows)
    assert progress_text(done).endswith("· kept step 30: preview distance 70 (lower is better)")
    clip = [{"step": 10, "total": 10, "metric": 0.81, "clip_text": 0.3}]
    assert "CLIP similarity 0.81 (higher is better)" in progress_text(
        _state(status="done", step=10, total=10, metric=0.81, kept_step=10, history=clip)
    )


def test_the_note_on_uploaded_images_does_not_show_the_run_s_copy(tmp_path):
    from studio.app.trainjobs import note_text

    run_dir = tmp_path / "runs" / "purple-two-20261128-134240-2837"
    said = f"training on 4 image(s) from {run_dir / 'images'} (2 with NAME.txt captions)"
    assert note_text(said, run_dir) == "training on 4 uploaded image(s) (2 with NAME.txt captions)"
    assert (
        note_text("training on 3 image(s) from /data/cats", run_dir)
        == "training on 3 image(s) from /data/cats"
    )


def test_the_trainer_s_notes_stay_closed_while_a_job_runs():
    def panel():  # run as a script of its own: it imports what it uses
        import pathlib
        import types

        from studio.app.trainjobs import state_ui
        from studio.runview import RunState

        runner = types.SimpleNamespace(runs_dir=pathlib.Path("/nonexistent/runs"))
        state = RunState(status="running", step=2, total=10, notes=["training on 4 image(s) from /data"])
        state_ui(runner, "job", state)

    at = AppTest.from_function(panel).run()
    assert not at.exception, at.exception
    [notes] = [e for e in at.expander if e.label.startswith("What the trainer noted")]
    assert not notes.proto.expanded


def test_a_finished_run_s_panel_names_its_series_and_shows_its_preview_enlarged(
    tokensmith_home, shown_images
):
    rows = [{"step": s, "total": 4, "loss": 1.0 / s, "val_loss": 0.5 / s} for s in range(1, 5)]
    job_id = run_folder(tokensmith_home, rows, {"event": "done", "name": "cat", "kept": 4})
    previews = tokensmith_home / "runs" / job_id / "previews"
    previews.mkdir()
    Image.new("RGB", (256, 32), "purple").save(previews / "step-000004.png")
    at = open_train(job=job_id)
    from tests.test_ui_train import chart_rows

    series = {v for r in chart_rows(at) for v in r.values() if isinstance(v, str)}
    assert {"training loss", "validation loss"} <= series and "val_loss" not in series
    assert (512, 64) in [image.size for image in shown_images]


def test_the_job_picker_names_a_job_once_with_its_start_time():
    from studio.app.trainjobs import job_labels
    from studio.jobs import Job

    now = time.mktime((2026, 11, 28, 15, 0, 0, 0, 0, -1))
    today = time.mktime((2026, 11, 28, 13, 42, 10, 0, 0, -1))
    earlier = time.mktime((2026, 11, 27, 9, 5, 0, 0, 0, -1))
    jobs = [
        Job("purple-two-20261128-134210-2837", Path("a"), "purple-two", created=today),
        Job("purple-tri", Path("b"), "purple-tri", created=earlier),
        Job("cat-1", Path("c"), "cat", created=today),
        Job("cat-2", Path("d"), "cat", created=today),
    ]
    assert job_labels(jobs, now) == {
        "purple-two-20261128-134210-2837": "purple-two — started 13:42",
        "purple-tri": "purple-tri — started 27 Nov 09:05",
        "cat-1": "cat — started 13:42 (cat-1)",
        "cat-2": "cat — started 13:42 (cat-2)",
    }


def test_the_root_is_train_itself_and_train_by_name_is_a_page(monkeypatch):
    import streamlit

    navigation = streamlit.navigation
    given = []

    def recording(pages, *args, **kwargs):
        given.extend(pages)
        return navigation(pages, *args, **kwargs)

    monkeypatch.setattr(streamlit, "navigation", recording)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["job"] = "some-job"
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["🎓 Train a concept"]  # the root is Train, no redirect
    assert at.query_params["job"] == "some-job"  # with the address's job
    served = {page.url_path: page for page in given}
    assert served[""].title == "Train"  # the default page, served at the root (Back leaves it)
    assert served["train"].title == "Train"  # /train is a page (it opens the root), not "Page not found"
