"""`tokensmith runs`: each run folder's status, step, scores and message, newest first, and the command that
resumes a run that did not finish; the same as JSON."""

import json
import os
import subprocess
import sys

from studio.cli import EXIT_OK, main


def _run_folder(runs, name: str, rows: list[dict], event: dict | None = None, pid: int | None = None, at=0):
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(f'name = "{name}"\n')
    lines = [json.dumps(row) for row in rows] + ([json.dumps(event)] if event else [])
    (folder / "progress.jsonl").write_text("\n".join(lines) + "\n")
    if pid is not None:
        (folder / "pid").write_text(f"{pid}\n")
    os.utime(folder, (1_800_000_000 + at, 1_800_000_000 + at))  # the listing is newest first
    return folder


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
    _run_folder(runs, "fox", [step], pid=os.getpid(), at=2)  # this live process stands for its trainer
    _run_folder(runs, "owl", [step], pid=_dead_pid(), at=3)
    assert main(["runs", "--home", str(tmp_path)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RUN", "STATUS", "STEP", "VAL", "METRIC", "UPDATED"]
    table = [line.split()[:5] for line in lines if not line.startswith("  ")][1:]
    assert table == [
        ["owl", "ended", "3/6", "0.25", "12.5"],
        ["fox", "running", "3/6", "0.25", "12.5"],
        ["dog", "stopped", "3/6", "0.25", "12.5"],
        ["cat", "done", "3/6", "0.25", "12.5"],
    ]
    assert f"  resume: tokensmith train --run-dir {stopped} --home {tmp_path} --resume" in lines
    assert "  stored cat after 6 steps" in lines

    assert main(["runs", "--home", str(tmp_path), "--json"]) == EXIT_OK
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
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
    _run_folder(runs, "again", [step], done, pid=os.getpid())
    bare = _run_folder(runs, "bare", [step], {"event": "stopped", "message": "stopped at step 2"}, at=1)
    (bare / "config.toml").unlink()
    broken = runs / "broken"
    (broken / "progress.jsonl").mkdir(parents=True)
    (broken / "config.toml").write_text('name = "broken"\n')
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
