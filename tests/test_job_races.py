"""Two studios (two `tokensmith ui`, or two tabs of one) on one home press Start at the same moment: one job
starts, the other is refused as any start is while a job runs. The second start is made to come at the one
point where it used to slip in: after the first checked that no job runs, before its job.json was written."""

import fcntl
import sys
import threading
import time

import pytest

from studio.jobs import JobRunner
from studio.trainrequest import TrainRequest
from tests.trainpage import FAKE_TRAINER


@pytest.fixture
def runners(tmp_path, tokensmith_home, monkeypatch):
    """Two job runners on one home, as two studio processes have; their jobs are cancelled at the end."""
    monkeypatch.setenv("FAKE_DELAY", "0.2")  # 50 steps: a job that runs for the whole test
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    made = [JobRunner(tokensmith_home, trainer_command=(sys.executable, str(script))) for _ in range(2)]
    yield made
    for job in made[0].jobs():
        made[0].cancel(job.id)
        made[0].wait(job.id, timeout=20)


def second_start_meanwhile(monkeypatch, runner: JobRunner, begin) -> dict:
    """Patch JobRunner.refuse_while_running: once the first caller's check has passed, `begin()` runs in a
    thread, and the first caller goes on once that thread has finished or waits for a lock."""
    real_check, real_flock = JobRunner.refuse_while_running, fcntl.flock
    second: dict = {}
    settled = threading.Event()

    def flock(fd: int, op: int) -> None:
        if threading.current_thread() is not second.get("thread"):
            return real_flock(fd, op)
        try:
            return real_flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError:
            settled.set()  # the second start waits for the first
            if op & fcntl.LOCK_NB:
                raise
        return real_flock(fd, op)

    def body() -> None:
        try:
            second["job"] = begin()
        except (RuntimeError, FileExistsError) as exc:
            second["refused"] = str(exc)
        finally:
            settled.set()

    def check(self: JobRunner) -> None:
        real_check(self)
        if self is runner and "thread" not in second:
            second["thread"] = threading.Thread(target=body, daemon=True)
            second["thread"].start()
            assert settled.wait(20), "the second start neither finished nor waited"

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(JobRunner, "refuse_while_running", check)
    return second


def running(runner: JobRunner) -> list[str]:
    return [job.id for job in runner.jobs() if runner.state(job).active]


def test_two_studios_that_press_start_at_once_start_one_job(runners, tmp_path, monkeypatch):
    first, other = runners
    second = second_start_meanwhile(
        monkeypatch, first, lambda: other.start(TrainRequest(name="dog", images=tmp_path, steps=50))
    )
    job = first.start(TrainRequest(name="cat", images=tmp_path, steps=50))
    second["thread"].join(20)
    assert "job" not in second, "both studios started a job"
    assert second["refused"] == (
        f"training job '{job.id}' is still running: wait for it or cancel it first (one job at a time keeps "
        "this machine responsive)"
    )
    assert running(first) == running(other) == [job.id]
    assert [p.name for p in first.runs_dir.iterdir()] == [job.id]  # the refused start made nothing


def test_a_resume_and_a_start_at_once_run_one_job(runners, tmp_path, monkeypatch):
    """Resume takes the same turn as Start: a stopped job resumed in one studio while the other starts."""
    first, other = runners
    stopped = first.start(TrainRequest(name="cat", images=tmp_path, steps=50))
    deadline = time.monotonic() + 20
    while first.state(stopped.id).step < 1 and time.monotonic() < deadline:  # its first checkpoint
        time.sleep(0.05)
    first.cancel(stopped.id)
    first.wait(stopped.id, timeout=20)
    assert first.state(stopped.id).status == "stopped"
    second = second_start_meanwhile(
        monkeypatch, first, lambda: other.start(TrainRequest(name="dog", images=tmp_path, steps=50))
    )
    first.resume(stopped.id)
    second["thread"].join(20)
    assert "job" not in second and "still running" in second["refused"]
    assert running(other) == [stopped.id]
