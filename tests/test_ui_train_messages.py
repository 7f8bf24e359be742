"""Train page: the trainer's messages in the page's words, form values the job really gets, and a "Start from"
refused before launch (AppTest, with the fake trainer of test_ui_jobs)."""

from __future__ import annotations

import pytest
import torch

import studio.jobs
from embeddings import Embedding, Store
from tests.trainpage import errors, fill, job_command, open_train, png, run_folder

FILES = [(f"{i}.png", png(), "image/png") for i in range(2)]


def _log(home, job_id: str, text: str) -> None:
    (home / "runs" / job_id / "log.txt").write_text(text)


# --- the trainer's flags become the form's fields ---


def test_a_failed_runs_advice_names_the_forms_field_not_the_flag(tokensmith_home):
    said = "the training prompt 'a <cat>' is 41 tokens with 16 vectors, more than the 32 this model reads"
    failed = {"event": "failed", "message": f"{said}; use --vectors 7 or fewer"}
    at = open_train(job=run_folder(tokensmith_home, [], failed))
    assert errors(at) == [f"{said}; use Vectors 7 or fewer"]


def test_a_refused_init_names_start_from(tokensmith_home):
    job_id = run_folder(tokensmith_home, [])
    refusal = "init embedding <neg> has width 768 (emb_params) but this model's text encoder has 64: a word"
    _log(tokensmith_home, job_id, f"tokensmith train: error: {refusal} (--init cat)\n")
    at = open_train(job=job_id)
    assert errors(at) == [f"{refusal} (Start from cat)"]
    assert "--init cat" in at.code[0].value  # the log stays as the trainer wrote it


def test_the_done_warning_and_the_notes_name_the_forms_fields(tokensmith_home):
    rows = [{"step": s, "total": 5, "loss": 1.0 / s} for s in range(1, 6)]
    warning = "the token may not hold the concept: more vectors hold more attributes (--vectors 4)"
    done = {"event": "done", "name": "cat", "kept": 5, "warning": warning}
    job_id = run_folder(tokensmith_home, rows, done)
    _log(tokensmith_home, job_id, "note: the init <cat> has 1 vector; --vectors 3 spreads it\n")
    at = open_train(job=job_id)
    [shown] = [w.value for w in at.warning]
    assert shown.endswith("more vectors hold more attributes (Vectors 4)") and "--" not in shown
    assert "the init <cat> has 1 vector; Vectors 3 spreads it" in [c.value for c in at.caption]


def test_a_stopped_run_with_notes_still_says_what_resume_does(tokensmith_home):
    rows = [{"step": s, "total": 40, "loss": 1.0 / s} for s in range(1, 13)]
    stopped = {"event": "stopped", "message": "stopped at step 12; resume with --resume"}
    job_id = run_folder(tokensmith_home, rows, stopped, checkpoint=12)
    _log(tokensmith_home, job_id, "note: training on 3 image(s) from /data/cats\n")
    at = open_train(job=job_id)
    assert [w.value for w in at.warning] == [
        "Stopped at step 12. Resume continues from the checkpoint at step 12."
    ]


# --- the form's values reach the job ---


@pytest.mark.parametrize(
    ("key", "flag", "value"), [("vectors", "--vectors", 28), ("steps", "--steps", 50000)]
)
def test_a_value_above_the_old_maximum_reaches_the_job(fake_trainer, tokensmith_home, key, flag, value):
    """The trainer, not the form, says how many vectors a model has room for: a large count is not swapped
    for the last one committed."""
    at = fill(open_train(), name="big", files=FILES)
    at.number_input(key=key).set_value(value).run()
    at.button(key="start").click().run()
    assert not errors(at), errors(at)
    try:
        command = job_command(at, tokensmith_home)
        assert command[command.index(flag) + 1] == str(value)
    finally:  # a 50,000-step fake job must not outlive the test (it slowed every test after it)
        runner = studio.jobs.JobRunner(tokensmith_home)
        runner.cancel(at.query_params["job"])
        runner.wait(at.query_params["job"], timeout=20)


# --- "Start from" refused before launch ---


def _stored(home, emb: Embedding) -> Store:
    store = Store.for_home(home)
    store.put(emb)
    return store


def _start_from(home, init: str) -> list[str]:
    at = fill(open_train(), name="cat", files=FILES)
    at.text_input(key="init").set_value(init).run()
    at.button(key="start").click().run()
    assert not (home / "runs").exists() or not list((home / "runs").iterdir())  # no job, no folder
    return errors(at)


def test_a_stored_init_made_for_another_model_is_refused_before_any_job(fake_trainer, tokensmith_home):
    _stored(tokensmith_home, Embedding("neg", {"emb_params": torch.zeros(1, 768)}))  # SD 1.x; demo is 64
    [error] = _start_from(tokensmith_home, "<neg>")
    assert error.startswith("“Start from” <neg> cannot start this run: init embedding <neg> has width 768")
    assert "use a word (Start from cat)" in error


def test_a_damaged_stored_init_is_refused_before_any_job(fake_trainer, tokensmith_home):
    store = _stored(tokensmith_home, Embedding("red", {"emb_params": torch.ones(1, 64)}))
    data = bytearray(store.path("red").read_bytes())
    data[-1] ^= 0xFF  # the header still reads; the sha256 does not match
    store.path("red").write_bytes(bytes(data))
    [error] = _start_from(tokensmith_home, "<red>")
    assert error.startswith("“Start from” <red> cannot start this run: ")


def test_brackets_inside_a_phrase_are_refused_in_the_forms_words(fake_trainer, tokensmith_home):
    [error] = _start_from(tokensmith_home, "a <no-such> thing")
    assert error.startswith("“Start from” 'a <no-such> thing': to start from a stored embedding write")


def test_a_name_stored_in_other_letter_case_is_suggested(fake_trainer, tokensmith_home):
    _stored(tokensmith_home, Embedding("red-pad", {"emb_params": torch.ones(2, 64)}))
    [error] = _start_from(tokensmith_home, "<RED-PAD>")
    assert "<RED-PAD>, which is not in the library" in error and "did you mean <red-pad>?" in error


def test_a_fitting_stored_init_starts_the_job(fake_trainer, tokensmith_home):
    _stored(tokensmith_home, Embedding("red", {"emb_params": torch.ones(1, 64)}))
    at = fill(open_train(), name="cat", files=FILES)
    at.text_input(key="init").set_value("<red>").run()
    at.button(key="start").click().run()
    assert not errors(at), errors(at)
    command = job_command(at, tokensmith_home)
    assert command[command.index("--init") + 1] == "<red>"
