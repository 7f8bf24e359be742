"""`tokensmith runs`: each run folder's status, step, scores and message, newest first, and the command that
resumes a run that did not finish; the same as JSON."""

import contextlib
import json
import os
import subprocess
import sys

from studio.cli import EXIT_ERROR, EXIT_OK, main
from trainers.runfolder import RunFolder


def _run_folder(runs, name: str, rows: list[dict], event: dict | None = None, pid: int | None = None, at=0):
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(f'name = "{name}"\n')
    (folder / "images.json").write_text("[]\n")  # written once, when the run begins
    lines = [json.dumps(row) for row in rows] + ([json.dumps(event)] if event else [])
    (folder / "progress.jsonl").write_text("\n".join(lines) + "\n")
    if pid is not None:
        (folder / "pid").write_text(f"{pid}\n")
    for path in (folder, *folder.iterdir()):  # the listing is newest first, by when the run began
        os.utime(path, (1_700_000_000 + at, 1_700_000_000 + at))
    return folder


@contextlib.contextmanager
def _trainer_of(folder):
    """This process holds `folder` as its live trainer does (the lock on its pid file)."""
    assert RunFolder(folder).claim() is None
    try:
        yield
    finally:
        RunFolder(folder).release()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_runs_lists_each_status_with_how_to_resume(tmp_path, capsys):
    runs = tmp_path / "runs"
    step = {"step": 3, "total": 6, "loss": 0.5, "val_loss": 0.25, "metric": 12.5}
    _run_folder(runs, "cat", [step], {"event": "done", "message": "stored cat after 6 steps", "name": "cat"})
    stopped = _run_folder(
        runs, "dog", [step], {"event": "stopped", "message": "stopped at step 3; resume with --resume"}, at=1
    )
    fox = _run_folder(runs, "fox", [step], at=2)
    _run_folder(runs, "owl", [step], pid=_dead_pid(), at=3)
    with _trainer_of(fox):  # this live process stands for its trainer
        assert main(["runs", "--home", str(tmp_path)]) == EXIT_OK
        lines = capsys.readouterr().out.splitlines()
        assert main(["runs", "--home", str(tmp_path), "--json"]) == EXIT_OK
        rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    assert lines[0].split() == ["RUN", "STATUS", "STEP", "VAL", "METRIC", "UPDATED"]
    table = [line.split()[:5] for line in lines if not line.startswith("  ")][1:]
    assert table == [
        ["owl", "ended", "3/6", "0.25", "12.5"],
        ["fox", "running", "3/6", "0.25", "12.5"],
        ["dog", "stopped", "3/6", "0.25", "12.5"],
        ["cat", "done", "3/6", "0.25", "12.5"],
    ]
    resume = f"tokensmith train --run-dir {stopped} --home {tmp_path} --resume"
    assert f"  resume: {resume}  # starts over from step 0: the run saved no checkpoint" in lines
    assert "  stored cat after 6 steps" in lines

    assert rows["cat"]["embedding"] == "cat" and rows["cat"]["resume"] is None
    assert rows["fox"]["resume"] is None and "runs/owl --home" in rows["owl"]["resume"]
    assert rows["dog"]["val_loss"] == 0.25 and rows["dog"]["total"] == 6


def test_runs_with_no_runs_says_how_to_start_one(tmp_path, capsys):
    assert main(["runs", "--home", str(tmp_path)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out == "" and "no training runs under" in err and "tokensmith train" in err


def test_a_live_resume_of_a_finished_run_is_running_and_odd_folders_are_listed(tmp_path, capsys):
    """A trainer alive in a folder whose log still ends with the last run's event is that run resumed (the CLI
    records no launch time); a folder without a config cannot be resumed; one that cannot be read is listed
    as such, and the others still are."""
    runs = tmp_path / "runs"
    step = {"step": 2, "total": 2}
    done = {"event": "done", "message": "stored", "name": "again"}
    again = _run_folder(runs, "again", [step], done)
    bare = _run_folder(runs, "bare", [step], {"event": "stopped", "message": "stopped at step 2"}, at=1)
    (bare / "config.toml").unlink()
    broken = runs / "broken"
    (broken / "progress.jsonl").mkdir(parents=True)
    (broken / "config.toml").write_text('name = "broken"\n')
    with _trainer_of(again):
        assert main(["runs", "--home", str(tmp_path), "--json"]) == EXIT_OK
        rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    assert (rows["again"]["status"], rows["again"]["resume"]) == ("running", None)
    assert rows["bare"]["resume"] is None and rows["bare"]["message"].endswith("start it again")
    assert rows["broken"]["status"] == "unreadable" and "cannot read" in rows["broken"]["message"]


def test_a_finished_runs_metric_is_the_stored_steps(tmp_path, capsys):
    rows = [{"step": 2, "total": 4, "metric": 9.0}, {"step": 4, "total": 4, "metric": 30.0}]
    done = {"event": "done", "message": "stored kept, kept step 2 of 4", "name": "kept", "kept": 2}
    _run_folder(tmp_path / "runs", "kept", rows, done)
    assert main(["runs", "--home", str(tmp_path), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)[0]["metric"] == 9.0  # not step 4's 30.0


def test_a_finished_run_whose_pid_is_another_process_now_is_done(tmp_path, capsys):
    """A SIGKILL (or a reboot) leaves `pid` behind; whichever process has that pid later is not the run."""
    step = {"step": 9, "total": 40}
    _run_folder(tmp_path / "runs", "s1", [step], pid=os.getpid())  # no lock: this process is not its trainer
    assert main(["runs", "--home", str(tmp_path), "--json"]) == EXIT_OK
    [row] = json.loads(capsys.readouterr().out)
    assert row["status"] == "ended" and row["resume"].endswith(" --resume")


def test_the_resume_line_says_where_it_continues_from(tmp_path, capsys):
    runs = tmp_path / "runs"
    stopped = {"event": "stopped", "message": "stopped at step 9"}
    kept = _run_folder(runs, "kept", [{"step": 9, "total": 40}], stopped)
    for step in (5, 9):
        (kept / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
    (kept / "previews").mkdir()
    (kept / "previews" / "step-000005.png").write_bytes(b"png")
    _run_folder(runs, "none", [], {"event": "failed", "message": "cannot load the model"}, at=1)
    assert main(["runs", "--home", str(tmp_path)]) == EXIT_OK
    resumes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  resume:")]
    assert [line.split("--resume")[1] for line in resumes] == [
        "  # starts over from step 0 with the same settings (the run saved no checkpoint): if the error "
        "above is about them, start a new run with other settings instead",  # failed before any checkpoint
        "  # continues from step 9",
    ]
    assert main(["runs", "--home", str(tmp_path), "--json"]) == EXIT_OK
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    assert (rows["kept"]["checkpoint_step"], rows["none"]["checkpoint_step"]) == (9, None)
    assert rows["kept"]["previews"] == [str(kept / "previews" / "step-000005.png")]
    assert rows["kept"]["kept_step"] is None and rows["kept"]["created"]


def test_runs_are_newest_first_by_when_they_began_not_by_their_last_write(tmp_path, capsys):
    runs = tmp_path / "runs"
    step = {"step": 1, "total": 4}
    old = _run_folder(runs, "f1", [step], {"event": "stopped", "message": "stopped"}, at=0)
    _run_folder(runs, "f2", [step], {"event": "done", "message": "stored", "name": "f2"}, at=100)
    (old / ".new").write_text(json.dumps({"step": 2, "total": 4}) + "\n")  # f1 resumed since: an atomic
    os.replace(old / ".new", old / "progress.jsonl")  # rewrite, which touches the folder too
    assert main(["runs", "--home", str(tmp_path), "--json"]) == EXIT_OK
    assert [row["run"] for row in json.loads(capsys.readouterr().out)] == ["f2", "f1"]


def test_a_home_that_is_a_file_is_refused(tmp_path, capsys):
    home = tmp_path / "notes.txt"
    home.write_text("not a home")
    assert main(["runs", "--home", str(home)]) == EXIT_ERROR
    assert "notes.txt (the tokensmith home) is a file, not a folder" in capsys.readouterr().err


def test_each_damaged_run_folder_is_listed_as_unreadable_with_why(tmp_path, capsys):
    runs = tmp_path / "runs"
    step, done = {"step": 2, "total": 2}, {"event": "done", "message": "stored", "name": "x"}
    _run_folder(runs, "good", [step], done)
    (_run_folder(runs, "dir", [step], done) / "job.json").mkdir()
    (_run_folder(runs, "list", [step], done) / "job.json").write_text("[]")
    (_run_folder(runs, "word", [step], done) / "job.json").write_text('{"created": "yesterday"}')
    (_run_folder(runs, "utf16", [step], done) / "job.json").write_bytes(b"\xff\xfe{}")
    _run_folder(runs, "null", [{"step": None, "total": 5}])
    _run_folder(runs, "x", [{"step": "x"}])
    assert main(["runs", "--home", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert main(["runs", "--home", str(tmp_path), "--json"]) == EXIT_OK
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows.pop("good")["status"] == "done"
    assert {name: row["status"] for name, row in rows.items()} == dict.fromkeys(rows, "unreadable")
    assert len(rows) == 6 and all(row["message"].startswith("cannot read ") for row in rows.values())
    assert "is a directory" in rows["dir"]["message"].lower()
    assert (
        "not an object" in rows["list"]["message"] and '"yesterday", not a number' in rows["word"]["message"]
    )
    assert "step is null" in rows["null"]["message"] and 'step is "x"' in rows["x"]["message"]
    assert out.count("unreadable") == 6


def _long_rows(steps: int, *, scores: bool = True) -> list[dict]:
    """A long run's rows: validation loss and preview score every 50 steps (or never)."""
    every = (lambda s: s % 50 == 0) if scores else (lambda s: False)
    return [
        {"step": s, "total": steps, "loss": 1 / (s + 1), "val_loss": 0.5 if every(s) else None,
         "metric": float(s) if every(s) else None}
        for s in range(steps + 1)
    ]  # fmt: skip


def _parsed_lines(monkeypatch) -> list[int]:
    """A count of json.loads calls (a progress line each), as a one-item list."""
    calls = [0]
    loads = json.loads

    def counting(*args, **kwargs):
        calls[0] += 1
        return loads(*args, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    return calls


def test_runs_reads_only_the_end_of_a_long_log_and_shows_what_a_whole_read_shows(
    tmp_path, capsys, monkeypatch
):
    from studio.runview import read_run

    done = {"event": "done", "message": "stored cat", "name": "cat", "kept": 5000}
    folder = _run_folder(tmp_path / "runs", "cat", _long_rows(5000), done)
    parsed = _parsed_lines(monkeypatch)
    assert main(["runs", "--home", str(tmp_path), "--json"]) == EXIT_OK
    assert parsed[0] < 1000  # of 5002 lines
    [row] = json.loads(capsys.readouterr().out)
    whole = read_run(folder, alive=False)
    assert (row["status"], row["step"], row["total"]) == ("done", 5000, 5000)
    assert (row["val_loss"], row["metric"], row["loss"]) == (whole.val_loss, whole.metric, whole.loss)
    assert row["metric"] == 5000.0 and row["kept_step"] == 5000


def test_runs_reads_a_long_log_whole_when_its_end_lacks_what_the_table_shows(tmp_path, capsys):
    # keep = best stored an early step: its score is in the log's head, not its end
    early = {"event": "done", "message": "stored owl", "name": "owl", "kept": 100}
    _run_folder(tmp_path / "runs", "owl", _long_rows(5000), early)
    # no validation and no previews: the end has no scores, and only a whole read shows there are none
    _run_folder(
        tmp_path / "runs", "fox", _long_rows(5000, scores=False), {"event": "done", "name": "fox"}, at=1
    )
    assert main(["runs", "--home", str(tmp_path), "--json"]) == EXIT_OK
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["owl"]["metric"] == 100.0 and rows["owl"]["val_loss"] == 0.5
    assert rows["fox"]["metric"] is None and rows["fox"]["val_loss"] is None and rows["fox"]["step"] == 5000
