"""Train page, after a job: training further replaces only the job's own result, is not offered where the
run's steps cannot change, and a refused launch leaves the run as it was; a finished job says whether the
Library still holds what it stored; running out of memory is told in what the page offers; and the studio's
jobs do not inherit a launcher's settings (AppTest and the job runner, with the fake trainer of
test_ui_jobs)."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch

from embeddings import Embedding, Store
from studio.cli import EXIT_OK, main
from studio.jobs import JobRunner
from studio.runview import read_run
from studio.trainrequest import TrainRequest
from tests.trainpage import errors, fill, job_command, open_train, png, run_folder, wait_for

REPLACE = "Replace a stored embedding of the same name"


def finished_job(home, name="cat", steps=4):
    """A job the fake trainer finished: it stored <name> (and its run's final snapshot)."""
    runner = JobRunner(home)
    job = runner.start(TrainRequest(name=name, images=home, steps=steps))
    assert runner.wait(job.id, timeout=30).status == "done"
    return runner, job


def blend_named(home, name: str) -> Embedding:
    """Another embedding stored under `name` (as `tokensmith blend --name NAME` stores one)."""
    emb = Embedding(name, {"emb_params": torch.full((1, 4), 0.5)}, {"parent": '{"method": "lerp"}'})
    Store.for_home(home).put(emb, overwrite=True)
    return emb


def command_of(job) -> list[str]:
    return json.loads((job.run_dir / "job.json").read_text())["command"]


# --- training further replaces only the job's own result ---


def test_train_further_refuses_a_name_that_now_holds_another_embedding(fake_trainer, tokensmith_home):
    runner, job = finished_job(tokensmith_home)
    store = Store.for_home(tokensmith_home)
    store.delete("cat")  # the trained one to the trash, then an unrelated <cat>
    blend = blend_named(tokensmith_home, "cat")
    at = open_train(job=job.id)
    assert any("no longer this job's result" in c.value for c in at.caption)
    at.button(key="further").click().run()
    assert errors(at) == [
        "<cat> in the Library is no longer this job's result: another embedding was stored under that name "
        f"after it was deleted or renamed; training further would replace it. Turn on “{REPLACE}” to "
        "replace it, or rename that one in the Library first"
    ]
    assert "--resume" not in command_of(job)  # nothing was launched
    assert store.get("cat").sha256 == blend.sha256
    at.toggle(key="further_overwrite").set_value(True).run()
    at.button(key="further").click().run()
    assert not errors(at), errors(at)
    assert command_of(job)[-5:] == ["--steps", "6", "--resume", "--overwrite", "--no-early-stopping"]
    runner.wait(job.id, timeout=30)


def test_train_further_refuses_a_name_held_by_an_unreadable_file(fake_trainer, tokensmith_home):
    runner, job = finished_job(tokensmith_home)
    Store.for_home(tokensmith_home).path("cat").write_bytes(b"broken")
    with pytest.raises(FileExistsError, match=r"cannot be read \(the Library's warning says why\)"):
        runner.train_further(job.id, 2)
    at = open_train(job=job.id)
    assert any("the Library's file of that name cannot be read" in w.value for w in at.warning)


def test_train_further_stores_a_deleted_result_again_without_replacing_anything(
    fake_trainer, tokensmith_home
):
    _, job = finished_job(tokensmith_home)
    Store.for_home(tokensmith_home).delete("cat")
    at = open_train(job=job.id)
    assert any("training further stores its result as <cat>" in c.value for c in at.caption)
    at.number_input(key="more_steps").set_value(2).run()
    at.button(key="further").click().run()
    assert not errors(at), errors(at)
    # without --overwrite: were <cat> stored again meanwhile, the trainer would refuse, not replace it
    assert command_of(job)[-4:] == ["--steps", "6", "--resume", "--no-early-stopping"]
    assert "--overwrite" not in command_of(job)
    wait_for(at, "done")
    assert any("Learned <cat>: it is in the Library" in s.value for s in at.success)


def test_train_further_replaces_the_jobs_own_result(fake_trainer, tokensmith_home):
    runner, job = finished_job(tokensmith_home)
    further = runner.train_further(job.id, 1)
    assert further.command[-3:] == ("--resume", "--overwrite", "--no-early-stopping")
    runner.wait(job.id, timeout=30)


# --- a run whose steps cannot change is not trained further ---


def cosine_run(home) -> str:
    rows = [{"step": s, "total": 6, "loss": 1.0 / s} for s in range(1, 7)]
    job_id = run_folder(home, rows, {"event": "done", "name": "cat", "kept": 6}, checkpoint=6)
    (home / "runs" / job_id / "config.toml").write_text('name = "cat"\nsteps = 6\nlr_schedule = "cosine"\n')
    return job_id


def test_a_cosine_run_is_not_offered_train_further_and_says_why(tokensmith_home):
    job_id = cosine_run(tokensmith_home)
    at = open_train(job=job_id)
    assert not [b for b in at.button if b.key == "further"]
    [said] = [i.value for i in at.info]
    assert said.startswith("Train further is not offered for this run: its learning rate follows a cosine")
    assert "start a new run with more Steps" in said and "--" not in said
    with pytest.raises(ValueError, match="cosine schedule"):
        JobRunner(tokensmith_home).train_further(job_id, 2)


def test_a_run_of_another_schedule_is_offered_train_further(tokensmith_home):
    job_id = cosine_run(tokensmith_home)
    (tokensmith_home / "runs" / job_id / "config.toml").write_text(
        'name = "cat"\nsteps = 6\nlr_schedule = "0.01:2, 0.002:-1"\n'
    )
    assert open_train(job=job_id).button(key="further")


# --- a refused launch leaves the run as it was ---

REFUSAL = (
    "tokensmith train: error: the images in /data/cats changed since the run began (2 -> 3 images: added "
    "c.png); restore them (and their NAME.txt captions) to resume, or start a new run without --resume"
)


def test_a_refused_train_further_keeps_the_job_done_and_its_command(
    fake_trainer, tokensmith_home, monkeypatch, capsys
):
    runner, job = finished_job(tokensmith_home)
    first = command_of(job)
    monkeypatch.setenv("FAKE_REFUSE", REFUSAL)
    runner.train_further(job.id, 2)
    state = runner.wait(job.id, timeout=30)
    assert (state.status, state.refused) == ("done", REFUSAL.removeprefix("tokensmith train: error: "))
    at = open_train(job=job.id)
    assert any(
        w.value.startswith("Train further was refused, and the run is as it was: the images")
        for w in at.warning
    )
    assert not errors(at) and at.button(key="further")  # still done: it may be trained further
    assert main(["runs", "--home", str(tokensmith_home), "--json"]) == EXIT_OK
    [row] = json.loads(capsys.readouterr().out)
    assert row["status"] == "done" and row["message"].endswith(
        "; a later launch was refused: " + REFUSAL.removeprefix("tokensmith train: error: ")
    )
    monkeypatch.delenv("FAKE_REFUSE")
    again = runner.train_further(job.id, 1)
    assert list(again.earlier) == first  # built on the run's command, not on the refused one
    assert runner.wait(job.id, timeout=30).status == "done"


def test_a_refused_resume_keeps_the_job_stopped_and_resume_starts_from_its_command(
    fake_trainer, tokensmith_home, monkeypatch
):
    monkeypatch.setenv("FAKE_DELAY", "0.2")
    runner = JobRunner(tokensmith_home)
    job = runner.start(TrainRequest(name="cat", images=tokensmith_home, steps=40))
    deadline = time.monotonic() + 30
    while not (job.run_dir / "checkpoints").is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.cancel(job.id)
    assert runner.wait(job.id, timeout=30).status == "stopped"
    monkeypatch.setenv("FAKE_REFUSE", REFUSAL)
    refused = runner.resume(job.id, gradient_checkpointing=True)
    state = runner.wait(job.id, timeout=30)
    assert state.status == "stopped" and state.refused.startswith("the images in /data/cats changed")
    assert state.can_resume
    again = runner.resume(job.id)  # not the refused command with its gradient checkpointing
    assert again.command == (*refused.earlier, "--resume") and "--gradient-checkpointing" not in again.command
    runner.wait(job.id, timeout=30)


def test_read_run_keeps_a_final_event_before_a_refused_launch(tmp_path):
    done = {"event": "done", "name": "cat", "message": "stored cat", "kept": 2}
    (tmp_path / "progress.jsonl").write_text(
        json.dumps({"step": 2, "total": 2}) + "\n" + json.dumps(done) + "\n"
    )
    (tmp_path / "log.txt").write_text("training\n" + REFUSAL + "\n")
    later = (tmp_path / "progress.jsonl").stat().st_mtime + 5
    state = read_run(tmp_path, alive=False, launched=later)
    assert (state.status, state.message, state.kept_step) == ("done", "stored cat", 2)
    assert state.refused.startswith("the images in /data/cats changed")
    failed = {"event": "failed", "message": "loss became NaN"}  # a failed run resumed and refused: failed
    (tmp_path / "progress.jsonl").write_text(json.dumps(failed) + "\n")
    state = read_run(tmp_path, alive=False, launched=later)
    assert state.status == "failed" and state.message.startswith("the images") and not state.refused


# --- a finished job says whether the Library still holds it ---


@pytest.mark.parametrize("change", ["deleted", "renamed", "replaced"])
def test_a_finished_job_says_when_its_result_is_no_longer_stored(fake_trainer, tokensmith_home, change):
    _, job = finished_job(tokensmith_home)
    store = Store.for_home(tokensmith_home)
    if change == "deleted":
        store.delete("cat")
    elif change == "renamed":
        store.rename("cat", "kitty")
    else:
        store.delete("cat")
        blend_named(tokensmith_home, "cat")
    at = open_train(job=job.id)
    assert not at.success
    shown = [m.value for m in [*at.info, *at.warning]]
    assert any(
        s.startswith(
            "Learned <cat>: it was stored as <cat>; it is no longer in the Library (deleted or renamed)"
        )
        for s in shown
    ), shown
    assert any("there now is another embedding" in s for s in shown) == (change == "replaced")


# --- out of memory, in what the page offers ---


def oom_event(**config) -> dict:
    """The `failed` event of a run with `config` that ran out of memory, as the trainer writes it."""
    from trainers.config import TrainConfig
    from trainers.memory import out_of_memory_advice

    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 4.00 GiB total)")
    advice = out_of_memory_advice(error, TrainConfig().replace(**config))
    return {"event": "failed", "message": str(advice), **advice.event_fields()}


@pytest.mark.parametrize(
    ("config", "checkpoint", "advice"),
    [
        (
            {"resume": True, "batch_size": 2, "preview_images": 4},
            6,
            "Resume with “with gradient checkpointing” on",
        ),
        ({"batch_size": 2, "preview_images": 4}, None, "start it again with “Gradient checkpointing” on"),
        ({"gradient_checkpointing": True, "preview_images": 4}, None, "it needs a GPU with more memory"),
        ({"resume": True, "gradient_checkpointing": True}, 6, "it needs a GPU with more memory"),
    ],
)
def test_out_of_memory_advice_names_what_the_page_offers(tokensmith_home, config, checkpoint, advice):
    rows = [{"step": s, "total": 20, "loss": 1.0 / s} for s in range(1, 7)]
    at = open_train(job=run_folder(tokensmith_home, rows, oom_event(**config), checkpoint))
    [shown] = errors(at)
    assert shown.startswith(
        "training ran out of memory (CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0;"
    )
    assert advice in shown and "--" not in shown, shown


def test_resume_after_running_out_of_memory_turns_gradient_checkpointing_on(fake_trainer, tokensmith_home):
    runner = JobRunner(tokensmith_home)
    job = runner.start(TrainRequest(name="cat", images=tokensmith_home, steps=2, extra_args=("--fail",)))
    runner.wait(job.id, timeout=30)
    progress = job.run_dir / "progress.jsonl"
    lines = progress.read_text().splitlines()[:-1]  # the failure as running out of memory says it
    progress.write_text("\n".join([*lines, json.dumps(oom_event(resume=True, batch_size=2))]) + "\n")
    at = open_train(job=job.id)
    assert at.toggle(key="resume_checkpointing").value is True  # on, after running out of memory
    at.button(key="resume").click().run()
    assert not errors(at), errors(at)
    assert command_of(job)[-2:] == ["--resume", "--gradient-checkpointing"]
    runner.wait(job.id, timeout=30)


@pytest.mark.parametrize(
    ("config", "advice"),
    [
        ({}, "start it again with “Gradient checkpointing” on"),
        ({"gradient_checkpointing": True}, "it needs a GPU with more memory"),
    ],
)
def test_a_run_that_ran_out_of_memory_before_the_event_said_why_gets_the_same_advice(
    tokensmith_home, config, advice
):
    # a failed event written before it had `reason: out_of_memory` is read from its message
    event = {key: value for key, value in oom_event(**config).items() if key in ("event", "message")}
    rows = [{"step": s, "total": 20, "loss": 1.0 / s} for s in range(1, 7)]
    at = open_train(job=run_folder(tokensmith_home, rows, event))
    [shown] = errors(at)
    assert advice in shown and "--" not in shown, shown


def test_a_message_that_only_reads_like_running_out_of_memory_is_shown_as_written(tokensmith_home):
    # the page's advice follows the trainer's record (reason: a failure of another kind), not the wording
    said = "training ran out of memory (my own words); try --batch-size 1"
    rows = [{"step": s, "total": 20, "loss": 1.0 / s} for s in range(1, 7)]
    failed = {"event": "failed", "message": said, "reason": "other"}
    at = open_train(job=run_folder(tokensmith_home, rows, failed, 6))
    [shown] = errors(at)
    assert "my own words" in shown and "with gradient checkpointing” on" not in shown, shown
    assert at.toggle(key="resume_checkpointing").value is False


def test_the_form_passes_gradient_checkpointing(fake_trainer, tokensmith_home):
    files = [(f"{i}.png", png(), "image/png") for i in range(2)]
    at = fill(open_train(), files=files)
    at.toggle(key="checkpointing").set_value(True).run()
    at.button(key="start").click().run()
    assert not errors(at), errors(at)
    assert "--gradient-checkpointing" in job_command(at, tokensmith_home)


# --- the studio's jobs, and its names ---


def test_jobs_do_not_inherit_a_launchers_settings(tokensmith_home, tmp_path, monkeypatch):
    script = tmp_path / "env_trainer.py"
    script.write_text(
        "import json, os, sys\n"
        "run_dir = sys.argv[sys.argv.index('--run-dir') + 1]\n"
        "seen = {k: v for k, v in os.environ.items() if k.startswith('ACCELERATE_')}\n"
        "open(os.path.join(run_dir, 'env.json'), 'w').write(json.dumps(seen))\n"
    )
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # a device choice made by hand: kept
    runner = JobRunner(tokensmith_home, trainer_command=(sys.executable, str(script)))
    job = runner.start(TrainRequest(name="cat", images=tokensmith_home, steps=1))
    runner.wait(job.id, timeout=30)
    assert json.loads((job.run_dir / "env.json").read_text()) == {"ACCELERATE_USE_CPU": "1"}


def test_a_name_held_by_an_unreadable_file_says_so(fake_trainer, tokensmith_home):
    store = Store.for_home(tokensmith_home)
    store.root.mkdir(parents=True)
    store.path("text").write_bytes(b"hello\n")
    files = [(f"{i}.png", png(), "image/png") for i in range(2)]
    at = fill(open_train(), name="text", files=files)
    at.button(key="start").click().run()
    [said] = errors(at)
    assert said.startswith("the name 'text' is held by a file the Library cannot read")
    assert "the warning at the top of the Library page" in said and f"“{REPLACE}”" in said
    assert "already" not in said


def test_a_copied_home_trains_further_in_itself_not_where_the_run_was_made(fake_trainer, tmp_path):
    """A home copied (or moved) since keeps its runs' commands, which name the old folders: the job continues
    in its own folder and stores into its own home."""
    import shutil

    first, second = tmp_path / "first", tmp_path / "second"
    _, job = finished_job(first)
    shutil.copytree(first, second)
    before = (first / "embeddings" / "cat.safetensors").read_bytes()
    runner = JobRunner(second)
    again = runner.train_further(job.id, 1)
    command = list(again.command)
    assert command[command.index("--run-dir") + 1] == str(second / "runs" / job.id)
    assert command[command.index("--home") + 1] == str(second)
    assert runner.wait(job.id, timeout=30).status == "done"
    assert (first / "embeddings" / "cat.safetensors").read_bytes() == before  # the first home is untouched
