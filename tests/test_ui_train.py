"""The Train page (AppTest): form checks, starting a job, the job panel after a reload, cancel and resume.

The trainer is a fake that honours the run-folder contract (tests/trainpage.py), so these tests check the
page's logic in seconds; the browser test trains for real on the demo world.
"""

import json

import pytest
from streamlit.testing.v1 import AppTest

import studio.jobs
from tests.trainpage import errors, fill, job_command, open_train, png, run_folder, wait_for


def test_form_shows_the_trainers_defaults_and_no_jobs():
    from trainers.config import TrainConfig

    at = open_train()
    assert at.number_input(key="steps").value == TrainConfig().steps
    assert at.number_input(key="lr").value == pytest.approx(TrainConfig().learning_rate)
    assert any("No training jobs yet" in i.value for i in at.info)


def test_starting_without_name_or_images_says_what_to_add(fake_trainer):
    at = open_train()
    at.button(key="start").click().run()
    assert "give the concept a name" in errors(at)[0]
    fill(at, name="cat").button(key="start").click().run()
    assert "add images of the concept" in errors(at)[0]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([("a.png", png(), "image/png")], "at least 2"),
        ([("a.png", png(), "image/png"), ("b.png", b"not a png", "image/png")], "'b.png' could not be read"),
        ([("a.png", png(), "image/png"), ("tiny.png", png(size=(8, 8)), "image/png")], "only 8×8 pixels"),
    ],
)
def test_bad_uploads_are_refused_with_a_clear_message(fake_trainer, files, message):
    at = fill(open_train(), files=files)
    at.button(key="start").click().run()
    assert message in errors(at)[0]
    assert "job" not in at.query_params


def test_a_started_job_is_shown_live_and_ends_in_the_library_link(fake_trainer, tokensmith_home):
    files = [(f"{i}.png", png((40 * i, 90, 90)), "image/png") for i in range(3)]
    at = fill(open_train(), files=files, steps=3)
    at.button(key="start").click().run()
    assert not errors(at), errors(at)
    job_id = at.query_params["job"]
    run_dir = tokensmith_home / "runs" / job_id
    assert sorted(p.name for p in (run_dir / "images").iterdir()) == ["000-0.png", "001-1.png", "002-2.png"]
    wait_for(at, "done")
    assert any("Learned <red-square>" in s.value for s in at.success)
    assert at.get("page_link")  # to the Library
    assert at.progress[0].value == 100
    assert "step 3/3" in at.progress[0].proto.text


def test_reload_finds_the_job_from_the_url(fake_trainer, tokensmith_home):
    runner = studio.jobs.JobRunner(tokensmith_home)
    first = runner.start(studio.jobs.TrainRequest(name="first", images=tokensmith_home, steps=1))
    runner.wait(first.id, timeout=30)
    second = runner.start(studio.jobs.TrainRequest(name="second", images=tokensmith_home, steps=1))
    runner.wait(second.id, timeout=30)
    at = open_train(job=first.id)  # a fresh session, as after a browser reload
    assert at.selectbox[0].value == first.id
    assert any(first.id in md.value and "done" in md.value for md in at.markdown)
    at = open_train()  # no ?job=: the newest
    assert at.selectbox[0].value == second.id


def test_cancel_then_resume_from_the_page(fake_trainer, monkeypatch):
    monkeypatch.setenv("FAKE_DELAY", "0.25")
    files = [(f"{i}.png", png(), "image/png") for i in range(2)]
    at = fill(open_train(), files=files, steps=40)
    at.button(key="start").click().run()
    wait_for(at, "running")
    at.button(key="cancel").click().run()
    wait_for(at, "stopped")
    assert any("Resume continues" in w.value for w in at.warning)
    monkeypatch.setenv("FAKE_DELAY", "0.001")
    at.button(key="resume").click().run()
    wait_for(at, "done")


def test_a_finished_job_is_trained_further_from_the_page(fake_trainer, tokensmith_home):
    runner = studio.jobs.JobRunner(tokensmith_home)
    job = runner.start(studio.jobs.TrainRequest(name="cat", images=tokensmith_home, steps=4))
    runner.wait(job.id, timeout=30)
    at = open_train(job=job.id)
    assert at.number_input(key="more_steps").value == 2  # half the steps so far, by default
    at.number_input(key="more_steps").set_value(3).run()
    at.button(key="further").click().run()
    assert not errors(at), errors(at)
    wait_for(at, "done")
    assert "step 7/7" in at.progress[0].proto.text
    command = json.loads((job.run_dir / "job.json").read_text())["command"]
    assert command[-5:] == ["--steps", "7", "--resume", "--overwrite", "--no-early-stopping"]


def test_a_failed_job_shows_the_trainers_message(fake_trainer, tokensmith_home):
    runner = studio.jobs.JobRunner(tokensmith_home)
    job = runner.start(
        studio.jobs.TrainRequest(name="bad", images=tokensmith_home, steps=2, extra_args=("--fail",))
    )
    runner.wait(job.id, timeout=30)
    at = open_train(job=job.id)
    assert "loss became NaN" in errors(at)[0]
    assert at.button(key="resume")


def test_an_existing_name_is_refused_unless_replacing(fake_trainer, tokensmith_home):
    import torch

    from embeddings import Embedding, Store

    Store.for_home(tokensmith_home).put(Embedding("taken", {"emb_params": torch.zeros(1, 8)}, {}))
    files = [(f"{i}.png", png(), "image/png") for i in range(2)]
    at = fill(open_train(), name="taken", files=files)
    at.button(key="start").click().run()
    # the toggle by its label, as the page shows it
    assert errors(at) == [
        "an embedding named 'taken' already exists: choose another name, or turn on “Replace a stored "
        "embedding of the same name” under More options"
    ]
    assert at.toggle(key="overwrite").label == "Replace a stored embedding of the same name"
    at.toggle(key="overwrite").set_value(True).run()
    at.button(key="start").click().run()
    assert not errors(at)
    assert "--overwrite" in (tokensmith_home / "runs" / at.query_params["job"] / "job.json").read_text()


def test_a_folder_on_this_machine_is_trained_in_place(fake_trainer, tokensmith_home, tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(png())
    at = fill(open_train())
    at.text_input(key="folder").set_value(str(tmp_path / "missing")).run()
    at.button(key="start").click().run()
    assert "does not exist" in errors(at)[0]
    at.text_input(key="folder").set_value(str(folder)).run()
    at.button(key="start").click().run()
    assert not errors(at), errors(at)
    command = job_command(at, tokensmith_home)
    assert command[command.index("--images") + 1] == str(folder)


def test_storing_the_last_step_instead_of_the_best_is_passed_to_the_trainer(fake_trainer, tokensmith_home):
    files = [(f"{i}.png", png(), "image/png") for i in range(2)]
    at = fill(open_train(), files=files)
    at.toggle(key="keep_best").set_value(False).run()
    at.button(key="start").click().run()
    assert not errors(at), errors(at)
    command = job_command(at, tokensmith_home)
    assert command[command.index("--keep") + 1] == "last"


def test_a_finished_run_shows_the_stored_step_and_its_preview(fake_trainer, monkeypatch):
    monkeypatch.setenv("FAKE_KEPT", "2")
    files = [(f"{i}.png", png(), "image/png") for i in range(2)]
    at = fill(open_train(), files=files, steps=3)
    at.button(key="start").click().run()
    wait_for(at, "done")
    assert any("It kept step 2 of 3, whose previews scored best." in s.value for s in at.success)
    assert at.image[-1].proto.imgs[0].caption == "preview at step 2 (stored)"


def test_a_checkpoint_file_gets_a_configs_field_that_reaches_the_trainer(fake_trainer, tokensmith_home):
    at = open_train()
    assert not [box for box in at.text_input if box.key == "model_config"], "no configs field for demo"
    at.text_input(key="model").set_value("/models/sd15.safetensors").run()
    at.text_input(key="model_config").set_value("/models/sd15-configs").run()
    assert at.query_params["model_config"] == "/models/sd15-configs"  # a reload keeps it
    files = [(f"{i}.png", png(), "image/png") for i in range(2)]
    fill(at, files=files).button(key="start").click().run()
    assert not errors(at), errors(at)
    command = job_command(at, tokensmith_home)
    assert command[command.index("--model") + 1] == "/models/sd15.safetensors"
    assert command[command.index("--model-config") + 1] == "/models/sd15-configs"


def chart_rows(at: AppTest) -> list[dict]:
    """The rows the page's charts draw (Streamlit ships chart data as Arrow tables)."""
    import pyarrow as pa

    rows = []
    for chart in [*at.get("arrow_vega_lite_chart"), *at.get("vega_lite_chart")]:
        for blob in [chart.proto.data.data, *(d.data.data for d in chart.proto.datasets)]:
            rows += pa.ipc.open_stream(blob).read_all().to_pylist() if blob else []
    return rows


def test_validation_loss_logged_every_few_steps_is_drawn(tokensmith_home):
    import math

    rows = [
        {"step": s, "total": 20, "loss": 1.0 / s} | ({"val_loss": 0.5 / s} if s % 5 == 0 else {})
        for s in range(1, 21)
    ]
    job_id = run_folder(tokensmith_home, rows, {"event": "done", "name": "cat", "kept": 20})
    at = open_train(job=job_id)
    drawn = [r for r in chart_rows(at) if "validation loss" in r.values()]
    values = [v for r in drawn for k, v in r.items() if k != "step" and not isinstance(v, str)]
    assert values and all(v is not None and not math.isnan(v) for v in values), values
    assert sorted(values) == sorted(0.5 / s for s in (5, 10, 15, 20))


def test_a_stopped_run_says_what_resume_does_in_the_studios_words(tokensmith_home):
    rows = [{"step": s, "total": 40, "loss": 1.0 / s} for s in range(1, 13)]
    stopped = {"event": "stopped", "message": "stopped at step 12; resume with --resume"}
    at = open_train(job=run_folder(tokensmith_home, rows, stopped, checkpoint=12))
    assert [w.value for w in at.warning] == [
        "Stopped at step 12. Resume continues from the checkpoint at step 12."
    ]
    assert at.button(key="resume")


def test_a_job_cancelled_before_its_first_checkpoint_offers_no_resume(
    fake_trainer, tokensmith_home, monkeypatch
):
    monkeypatch.setenv("FAKE_STARTUP", "30")  # the real trainer imports torch first
    runner = studio.jobs.JobRunner(tokensmith_home)
    job = runner.start(studio.jobs.TrainRequest(name="early", images=tokensmith_home, steps=5))
    runner.cancel(job.id)
    assert runner.wait(job.id, timeout=30).status == "stopped"
    at = open_train(job=job.id)
    assert not [b for b in at.button if b.key == "resume"]
    assert any("start training again" in i.value for i in at.info)
    assert "--resume" not in " ".join(w.value for w in at.warning)


def test_a_job_that_failed_before_training_offers_no_resume(fake_trainer, tokensmith_home, monkeypatch):
    refusal = "tokensmith train: error: init: no stored embedding <nope>"  # as the trainer prints it
    monkeypatch.setenv("FAKE_REFUSE", refusal)  # it exits before it writes anything
    runner = studio.jobs.JobRunner(tokensmith_home)
    job = runner.start(studio.jobs.TrainRequest(name="bad-init", images=tokensmith_home, steps=5))
    # failed, as a refusal after the trainer wrote its first lines is: both refuse the run before step 1
    assert runner.wait(job.id, timeout=30).status == "failed"
    at = open_train(job=job.id)
    # the refusal itself heads the page, not only a generic "exited" above the log
    assert [e.value for e in at.error] == ["init: no stored embedding <nope>"]
    assert not [b for b in at.button if b.key == "resume"]
    assert any("start training again" in i.value for i in at.info)


def test_a_start_refused_while_a_job_runs_leaves_no_folder(fake_trainer, tokensmith_home, monkeypatch):
    monkeypatch.setenv("FAKE_DELAY", "0.5")
    files = [(f"{i}.png", png(), "image/png") for i in range(2)]
    at = fill(open_train(), name="first", files=files, steps=40)
    at.button(key="start").click().run()
    first = at.query_params["job"]
    try:
        for name in ("second", "third"):
            fill(at, name=name).button(key="start").click().run()
            assert "still running" in errors(at)[0]
        assert [p.name for p in (tokensmith_home / "runs").iterdir()] == [first]
    finally:
        studio.jobs.JobRunner(tokensmith_home).cancel(first)
        studio.jobs.JobRunner(tokensmith_home).wait(first, timeout=20)


def test_a_start_from_a_name_not_in_the_library_is_refused_before_any_job(fake_trainer, tokensmith_home):
    files = [(f"{i}.png", png(), "image/png") for i in range(2)]
    at = fill(open_train(), name="cat", files=files)
    at.text_input(key="init").set_value("<no-such-cat>").run()
    at.button(key="start").click().run()
    assert "<no-such-cat>, which is not in the library" in errors(at)[0]
    assert not (tokensmith_home / "runs").exists() or not list((tokensmith_home / "runs").iterdir())


@pytest.mark.parametrize("kind", ["an object", "a style"])
def test_captions_next_to_a_folders_images_reach_the_prompts(fake_trainer, tokensmith_home, tmp_path, kind):
    """The folder box says NAME.txt captions join the prompts: the templates the job trains with use them."""
    from trainers.data import fill_template, load_images, template_set

    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(png())
    (folder / "0.txt").write_text("on a red sofa")
    at = fill(open_train())
    assert "joins its prompts as a caption" in at.text_input(key="folder").help
    at.text_input(key="folder").set_value(str(folder))
    at.radio(key="kind").set_value(kind).run()
    at.button(key="start").click().run()
    assert not errors(at), errors(at)
    command = job_command(at, tokensmith_home)
    templates = command[command.index("--templates") + 1] if "--templates" in command else "object"
    caption = load_images(command[command.index("--images") + 1])[0].caption
    assert all(fill_template(t, "<x>", caption).endswith(", on a red sofa") for t in template_set(templates))


def test_a_finished_run_shows_its_warning_and_the_trainers_notes(tokensmith_home):
    rows = [{"step": s, "total": 20, "loss": 1.0 / s} for s in range(1, 21)]
    warning = "only 25% of the stored step's previews have the training images' shape (triangle)"
    final = {"event": "done", "name": "cat", "kept": 20, "warning": warning}
    job_id = run_folder(tokensmith_home, rows, final)
    (tokensmith_home / "runs" / job_id / "log.txt").write_text(
        "note: training on 3 image(s) from /data/cats; skipped a.gif: only PNG/JPEG/WebP are read\n"
        "note: the backgrounds vary (gray, blue): 1 image(s) without a NAME.txt caption are captioned\n"
        "note: once this run has begun, add --resume to either command to continue it\n"
        "step 20/20 · loss 0.05\n"
    )
    at = open_train(job=job_id)
    assert not any("Learned <cat>" in s.value for s in at.success)  # not a plain success
    assert any("Stored <cat>" in w.value and warning in w.value for w in at.warning)
    captions = [c.value for c in at.caption]
    assert any(c.startswith("training on 3 image(s)") and "skipped a.gif" in c for c in captions)
    assert any(c.startswith("the backgrounds vary") for c in captions)
    assert not any("--resume" in c for c in captions)  # CLI advice stays in the log
