"""The job runner (studio/jobs.py) against a fake trainer that honours the run-folder contract."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.jobs import JobRunner, new_job_id
from studio.progressfile import read_progress
from studio.runview import read_run
from studio.trainrequest import TrainRequest
from tests.trainpage import FAKE_TRAINER


@pytest.fixture
def runner(tmp_path, tokensmith_home):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    return JobRunner(tokensmith_home, trainer_command=(sys.executable, str(script)))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def request(tmp_path, **kw) -> TrainRequest:
    return TrainRequest(name=kw.pop("name", "cat"), images=tmp_path, **kw)


def test_request_flags_leave_unset_options_to_the_trainer(tmp_path):
    assert request(tmp_path).to_args() == ["--images", str(tmp_path), "--name", "cat"]
    full = request(tmp_path, init="toy", vectors=2, style=True, steps=50, learning_rate=0.005, model="demo")
    assert full.to_args()[4:] == [
        "--init", "toy", "--vectors", "2", "--templates", "style", "--steps", "50",
        "--learning-rate", "0.005", "--model", "demo",
    ]  # fmt: skip


def test_job_ids_are_url_safe_and_sortable():
    job_id = new_job_id("my cat/../x", now=0)
    assert job_id.startswith("my-cat-x-19700101-")
    assert all(c.isalnum() or c in "-_" for c in job_id)


def test_finished_job_reports_done_with_history_previews_and_snapshots(runner, tmp_path):
    job = runner.start(request(tmp_path, steps=4))
    state = runner.wait(job.id, timeout=30)
    assert state.status == "done"
    assert state.embedding_name == "cat"
    assert (state.step, state.total, state.fraction) == (4, 4, 1.0)
    assert state.loss == pytest.approx(0.25)
    assert [row["step"] for row in state.history] == [1, 2, 3, 4]
    assert [p.name for p in state.previews][-1] == "step-000004.png"
    assert len(state.snapshots) == 4
    assert not state.active and not state.resumable
    recorded = json.loads((job.run_dir / "job.json").read_text())
    assert recorded["command"][-4:] == ["--run-dir", str(job.run_dir), "--home", str(runner.home)]
    assert "training cat" in (job.run_dir / "log.txt").read_text()


def test_cancel_stops_the_trainer_cleanly_and_resume_continues(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DELAY", "0.2")
    job = runner.start(request(tmp_path, steps=40))
    deadline = time.monotonic() + 20
    while runner.state(job.id).step < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.state(job.id).status == "running"
    assert runner.cancel(job.id)
    state = runner.wait(job.id, timeout=20)
    assert state.status == "stopped" and state.can_resume and state.checkpoint_step == state.step
    assert state.message.startswith("stopped at step")
    stopped_at = state.step
    assert not runner.cancel(job.id)  # nothing left to stop

    monkeypatch.setenv("FAKE_DELAY", "0.01")
    monkeypatch.setenv("FAKE_STARTUP", "0.5")
    resumed = runner.resume(job.id)
    assert resumed.run_dir == job.run_dir and resumed.command[-1] == "--resume"
    assert runner.state(job.id).status == "running"  # the old `stopped` line is not this launch's end
    state = runner.wait(job.id, timeout=30)
    assert state.status == "done"
    assert [row["step"] for row in state.history] == list(range(1, 41))
    assert state.history[stopped_at]["step"] == stopped_at + 1  # continued, not restarted


def test_a_job_stopped_before_its_first_checkpoint_cannot_be_resumed(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STARTUP", "30")  # cancelled while the trainer starts
    job = runner.start(request(tmp_path, steps=5))
    runner.cancel(job.id)
    state = runner.wait(job.id, timeout=30)
    assert state.status == "stopped" and state.resumable and not state.can_resume
    with pytest.raises(RuntimeError, match="nothing to resume from"):
        runner.resume(job.id)


def test_a_second_job_is_refused_while_one_runs(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DELAY", "0.2")
    job = runner.start(request(tmp_path, steps=50))
    with pytest.raises(RuntimeError, match="still running"):
        runner.start(request(tmp_path, name="dog"))
    runner.cancel(job.id)
    runner.wait(job.id, timeout=20)
    runner.start(request(tmp_path, name="dog", steps=1))


def test_crash_without_final_event_is_reported_with_the_log(runner, tmp_path):
    job = runner.start(request(tmp_path, steps=10, extra_args=("--crash",)))
    state = runner.wait(job.id, timeout=30)
    assert state.status == "ended" and state.resumable
    assert "exited without a final report" in state.message
    assert "something broke" in state.log_tail


def test_failed_event_carries_the_trainers_message(runner, tmp_path):
    job = runner.start(request(tmp_path, steps=2, extra_args=("--fail",)))
    state = runner.wait(job.id, timeout=30)
    assert state.status == "failed"
    assert state.message == "loss became NaN: lower the learning rate"


def test_a_restarted_ui_finds_running_and_finished_jobs(runner, tmp_path, monkeypatch):
    done = runner.start(request(tmp_path, name="first", steps=1))
    runner.wait(done.id, timeout=30)
    monkeypatch.setenv("FAKE_DELAY", "0.2")
    live = runner.start(request(tmp_path, name="second", steps=50))

    fresh = JobRunner(runner.home, trainer_command=runner.trainer_command)  # a new UI process
    assert [job.id for job in fresh.jobs()] == [live.id, done.id]
    assert fresh.state(done.id).status == "done"
    assert fresh.state(live.id).active
    assert fresh.cancel(live.id)
    assert runner.wait(live.id, timeout=20).status == "stopped"


def test_runs_started_from_the_cli_are_listed(runner):
    cli_run = runner.runs_dir / "from-cli"
    cli_run.mkdir(parents=True)
    (cli_run / "progress.jsonl").write_text(
        '{"step": 3, "total": 3, "loss": 0.1}\n{"event": "done", "name": "x"}\n'
    )
    (runner.runs_dir / "unrelated").mkdir()
    assert [job.id for job in runner.jobs()] == ["from-cli"]
    assert runner.state("from-cli").embedding_name == "x"


def test_unknown_or_unsafe_job_ids_are_key_errors(runner):
    for bad in ("nope", "../x", "", ".."):
        with pytest.raises(KeyError):
            runner.get(bad)


def test_progress_reader_skips_a_half_written_line_and_resets_after_resume(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text(
        '{"step": 1, "loss": 2.0}\n{"event": "stopped"}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo'
    )
    rows, final = read_progress(path)
    assert [row["step"] for row in rows] == [1, 2] and final is None
    state = read_run(tmp_path, alive=True)
    assert (state.status, state.step, state.loss, state.total, state.fraction) == (
        "running",
        2,
        1.5,
        None,
        0.0,
    )
    assert read_run(tmp_path, alive=False).status == "ended"
    assert read_run(tmp_path / "missing", alive=True).status == "starting"


def test_a_relative_home_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = JobRunner("rel-home")
    assert runner.home == tmp_path / "rel-home" and runner.runs_dir.is_absolute()


def test_a_finished_job_trains_further_from_where_it_ended(runner, tmp_path):
    job = runner.start(request(tmp_path, steps=4))
    assert runner.wait(job.id, timeout=30).status == "done"
    with pytest.raises(RuntimeError, match="train it further"):
        runner.resume(job.id)
    with pytest.raises(ValueError, match="at least 1"):
        runner.train_further(job.id, 0)

    further = runner.train_further(job.id, 3)
    assert further.command.count("--steps") == 1
    assert further.command[further.command.index("--steps") + 1] == "7"
    assert further.command[-3:] == ("--resume", "--overwrite", "--no-early-stopping")
    state = runner.wait(job.id, timeout=30)
    assert state.status == "done" and [row["step"] for row in state.history] == list(range(1, 8))


def test_resuming_or_training_further_waits_for_a_running_job(runner, tmp_path, monkeypatch):
    job = runner.start(request(tmp_path, steps=2))
    assert runner.wait(job.id, timeout=30).status == "done"
    monkeypatch.setenv("FAKE_DELAY", "0.2")
    other = runner.start(request(tmp_path, name="dog", steps=50))
    with pytest.raises(RuntimeError, match="has not finished"):
        runner.train_further(other.id, 1)
    with pytest.raises(RuntimeError, match="still running"):
        runner.train_further(job.id, 1)
    runner.cancel(other.id)
    runner.wait(other.id, timeout=20)


def test_a_launch_that_exits_before_writing_is_not_read_as_the_previous_runs_end(
    runner, tmp_path, monkeypatch
):
    job = runner.start(request(tmp_path, steps=3))
    assert runner.wait(job.id, timeout=30).status == "done"
    monkeypatch.setenv("FAKE_REFUSE", "refused: no checkpoint")  # it exits before touching the run folder
    runner.train_further(job.id, 2)
    state = runner.wait(job.id, timeout=30)
    assert state.status == "ended" and "refused: no checkpoint" in state.log_tail  # no `error:` line


def test_a_trainer_that_refuses_before_writing_has_failed_with_its_reason(runner, tmp_path, monkeypatch):
    """A refusal before the run folder is written (a bad init) reads as one after it (a prompt too long for
    the model, a `failed` event): failed, with the trainer's reason as the message."""
    monkeypatch.setenv("FAKE_REFUSE", "tokensmith train: error: init: no stored embedding <nope>")
    job = runner.start(request(tmp_path, steps=3))
    state = runner.wait(job.id, timeout=30)
    assert (state.status, state.message) == ("failed", "init: no stored embedding <nope>")
    assert state.resumable and not state.can_resume


def test_the_latest_validation_loss_and_metric_stay_on_show_between_their_steps(tmp_path):
    rows = [
        {"step": 0, "loss": None, "val_loss": 0.45, "metric": 292.4},
        {"step": 25, "loss": 0.27, "val_loss": 0.29, "metric": 20.3},
        {"step": 26, "loss": 0.28, "val_loss": None, "metric": None},
        {"step": 27, "loss": 0.25},
    ]
    (tmp_path / "progress.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    state = read_run(tmp_path, alive=True)
    assert (state.step, state.loss, state.val_loss, state.metric) == (27, 0.25, 0.29, 20.3)


def test_a_run_folder_that_cannot_be_read_is_shown_as_unreadable(tmp_path):
    folder = tmp_path / "run"
    (folder / "progress.jsonl").mkdir(parents=True)  # not a file: reading it fails
    state = read_run(folder, alive=False)
    assert state.status == "unreadable" and "cannot read" in state.message
    assert not state.active and not state.resumable


# --- whose process a job's is, and damaged folders ---

# A trainer started from the CLI in a job's folder (`tokensmith train --run-dir … --resume`): it claims the
# folder and lives on
CLI_TRAINER = (
    "import sys, time\nfrom pathlib import Path\nfrom trainers.runfolder import RunFolder\n"
    "print(RunFolder(Path(sys.argv[1])).claim(), flush=True)\ntime.sleep(60)\n"
)


def _job_folder(runner, job_id: str, rows: list[dict], **job) -> Path:
    """A job's run folder as the studio left it: job.json (launched an hour ago) and progress.jsonl."""
    run_dir = runner.runs_dir / job_id
    (run_dir / "checkpoints" / "step-000002").mkdir(parents=True)
    (run_dir / "config.toml").write_text('name = "cat"\n')
    (run_dir / "progress.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    launched = time.time() - 3600
    record = {"id": job_id, "run_dir": str(run_dir), "name": "cat", "command": ["x"], "created": launched}
    (run_dir / "job.json").write_text(json.dumps(record | {"launched": launched} | job))
    os.utime(run_dir / "job.json", (launched + 60, launched + 60))  # the cancel, if any, came then
    return run_dir


def test_a_finished_job_whose_pid_now_belongs_to_another_process_is_done_and_never_signalled(runner):
    rows = [{"step": 2, "total": 2}, {"event": "done", "name": "cat", "message": "stored cat"}]
    other = subprocess.Popen(  # the pid job.json names, reused by an unrelated process group
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        _job_folder(runner, "cat-1", rows, pid=other.pid)
        (runner.runs_dir / "cat-1" / "pid").write_text(f"{other.pid}\n")  # left by a SIGKILL
        assert runner.state("cat-1").status == "done"
        runner.refuse_while_running()  # nothing runs
        assert not runner.cancel("cat-1")
        time.sleep(0.1)
        assert other.poll() is None  # not signalled
    finally:
        other.kill()
        other.wait()


def _cli_trainer(run_dir: Path) -> subprocess.Popen:
    trainer = subprocess.Popen(
        [sys.executable, "-c", CLI_TRAINER, str(run_dir)], stdout=subprocess.PIPE, start_new_session=True
    )
    assert trainer.stdout.readline() == b"None\n"  # it holds the folder
    return trainer


def test_a_cancelled_job_resumed_from_the_cli_is_running_and_cancel_reaches_that_trainer(runner):
    """The studio's trainer (job.json's pid) was cancelled; `tokensmith train --run-dir … --resume` took the
    folder after that."""
    run_dir = _job_folder(runner, "cat-2", [{"step": 2, "total": 9}], pid=_dead_pid(), cancelled=True)
    trainer = _cli_trainer(run_dir)
    try:
        assert runner.state("cat-2").status == "running"
        with pytest.raises(RuntimeError, match="still running"):
            runner.refuse_while_running()
        trainer.kill()  # killed without a final record: it ended (the cancel was not sent to it)
        trainer.wait()
        assert runner.state("cat-2").status == "ended"
    finally:
        trainer.kill()
        trainer.wait()
        trainer.stdout.close()

    trainer = _cli_trainer(run_dir)  # resumed again, and cancelled from the studio this time
    try:
        assert runner.cancel("cat-2")
        assert trainer.wait(timeout=10) == -signal.SIGTERM
        assert runner.state("cat-2").status == "stopped"
    finally:
        trainer.kill()
        trainer.wait()
        trainer.stdout.close()


def test_a_restarted_studio_knows_its_launch_before_the_trainer_claims_the_folder(
    runner, tmp_path, monkeypatch
):
    monkeypatch.setenv("FAKE_STARTUP", "30")  # the trainer is still importing torch
    job = runner.start(request(tmp_path, steps=5))
    fresh = JobRunner(runner.home, trainer_command=runner.trainer_command)  # a new UI process
    assert fresh.state(job.id).status == "starting"
    with pytest.raises(RuntimeError, match="still running"):
        fresh.refuse_while_running()
    assert fresh.cancel(job.id)
    assert runner.wait(job.id, timeout=20).status == "stopped"


def _job_json_folder(run_dir: Path) -> None:
    (run_dir / "job.json").unlink()
    (run_dir / "job.json").mkdir()


DAMAGED = {
    "job.json is a folder": _job_json_folder,
    "job.json is a list": lambda run: (run / "job.json").write_text("[]"),
    "job.json's created is a word": lambda run: (run / "job.json").write_text('{"created": "yesterday"}'),
    "job.json is not UTF-8": lambda run: (run / "job.json").write_bytes(b"\xff\xfe{}"),
    "a progress row's step is null": lambda run: _append(run, {"step": None, "total": 5}),
    "a progress row's step is a word": lambda run: _append(run, {"step": "x"}),
}


def _append(run_dir: Path, row: dict) -> None:
    with (run_dir / "progress.jsonl").open("a") as out:
        out.write(json.dumps(row) + "\n")


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
def test_a_damaged_run_folder_is_unreadable_and_the_others_still_list(runner, damage):
    rows = [{"step": 2, "total": 2}, {"event": "done", "name": "cat", "message": "stored cat"}]
    _job_folder(runner, "good", rows)
    DAMAGED[damage](_job_folder(runner, "bad", rows[:1]))
    assert sorted(job.id for job in runner.jobs()) == ["bad", "good"]
    bad = runner.state("bad")
    assert bad.status == "unreadable" and bad.message.startswith("cannot read ")
    assert runner.state("good").status == "done"
    runner.refuse_while_running()
    assert not runner.cancel("bad")
    with pytest.raises(RuntimeError, match="cannot be resumed: cannot read "):
        runner.resume("bad")


def test_a_cli_run_whose_name_has_a_dot_can_be_opened_from_the_studio(runner, tmp_path):
    # `tokensmith train --name cat.v2` runs in runs/cat.v2 (embedding names may hold dots): the studio
    # lists it, so it must open it too
    run_dir = runner.runs_dir / "cat.v2"
    run_dir.mkdir(parents=True)
    (run_dir / "progress.jsonl").write_text(json.dumps({"step": 2, "total": 5, "loss": 0.5}) + "\n")
    assert [job.id for job in runner.jobs()] == ["cat.v2"]
    assert runner.get("cat.v2").run_dir == run_dir and runner.state("cat.v2").step == 2
    for unsafe in (".hidden", "cat..v2", "a/b", "../cat.v2", ""):
        with pytest.raises(KeyError, match="is not a job id"):
            runner.get(unsafe)
