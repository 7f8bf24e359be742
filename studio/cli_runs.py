"""`tokensmith runs`: every training run under HOME/runs and where it stands (running, done, stopped, failed,
ended), read from the run folders as the studio's Train page reads them, with the command that resumes the
ones that did not finish."""

from __future__ import annotations

import json
import shlex
import sys
import time

from studio.cli_options import add_command


def register(subparsers, common) -> None:
    """Add `runs` to the `tokensmith` parser."""
    sub = add_command(
        subparsers,
        common,
        "runs",
        "list training runs: status, step, validation loss, how to resume",
        (
            "Examples:\n  tokensmith runs\n  tokensmith runs --json\n\n"
            "One line per run folder under HOME/runs, newest first (by when the run began): its\n"
            "status (starting, running, done, stopped, failed, ended: the trainer exited without a final\n"
            "record, or unreadable), step, latest validation loss and preview score, and when it last\n"
            "wrote. A finished run's message follows, and a run that did not finish shows the command\n"
            "that resumes it: from its newest checkpoint, or from step 0 when it saved none."
        ),
        description="List the training runs under HOME/runs: status, step, validation loss, how to resume.",
    )
    sub.add_argument("--json", action="store_true", help="print the runs as JSON on stdout")
    sub.set_defaults(run=run_runs)


def run_runs(args) -> int:
    from studio.jobs import JobRunner

    runner = JobRunner(args.home)
    _check_home(runner)
    rows = [_row(job, runner) for job in runner.jobs()]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print(f"no training runs under {runner.runs_dir}: `tokensmith train` starts one", file=sys.stderr)
        return 0
    width = max(len(row["run"]) for row in rows)
    print(f"{'RUN':<{width}}  {'STATUS':<10}  {'STEP':>9}  {'VAL':>7}  {'METRIC':>7}  UPDATED")
    for row in rows:
        step = f"{row['step']}/{row['total']}" if row["total"] else str(row["step"])
        print(
            f"{row['run']:<{width}}  {row['status']:<10}  {step:>9}  {_num(row['val_loss']):>7}  "
            f"{_num(row['metric']):>7}  {row['updated'] or '-'}"
        )
        if row["message"]:
            print(f"  {row['message']}")
        if row["resume"]:
            print(f"  resume: {row['resume']}  # {_resume_note(row['checkpoint_step'], row['status'])}")
    return 0


def _check_home(runner) -> None:
    """A --home (or its runs/) that is a file holds no runs: say so, rather than that there are none."""
    from embeddings.errors import TokensmithError

    for folder, what in ((runner.home, "the tokensmith home"), (runner.runs_dir, "its runs folder")):
        if folder.exists() and not folder.is_dir():
            raise TokensmithError(f"{folder} ({what}) is a file, not a folder: pass --home with a folder")


def _resume_note(checkpoint_step: int | None, status: str = "") -> str:
    """What the resume command does: a shell comment, so the line still pastes as a command. A run that
    failed before its first checkpoint mostly failed on its own settings (too many vectors for the model, an
    init it cannot read): starting it over with them fails again."""
    if checkpoint_step is None and status == "failed":
        return (
            "starts over from step 0 with the same settings (the run saved no checkpoint): if the error "
            "above is about them, start a new run with other settings instead"
        )
    if checkpoint_step is None:
        return "starts over from step 0: the run saved no checkpoint"
    return f"continues from step {checkpoint_step}"


def _row(job, runner) -> dict:
    """One run as the listing shows it; a folder that cannot be read is listed as `unreadable`, with why."""
    progress = job.run_dir / "progress.jsonl"
    row = {"run": job.id, "run_dir": str(job.run_dir), "status": "unreadable", "step": 0, "total": None}
    row |= dict.fromkeys(("loss", "val_loss", "metric", "eta", "updated", "embedding", "resume"))
    row |= {"created": _when(job.created), "checkpoint_step": None, "kept_step": None, "previews": []}
    state = runner.state(job, tail=True)  # the end of a long log will do; unreadable: `unreadable`
    try:
        updated = progress.stat().st_mtime if progress.is_file() else None
    except OSError as exc:  # gone or unreadable since: the folder changed under the listing
        return row | {"message": f"cannot read {progress}: {exc}"}
    message = state.message
    if state.status == "ended":  # the studio shows the log below its message; the CLI has none
        message = "the trainer exited without a final record (killed, or it crashed)"
    if state.refused:  # a later resume or train-further the trainer refused; the run is as it was
        message = f"{message}; a later launch was refused: {state.refused}".lstrip("; ")
    row |= {
        "status": state.status,
        "step": state.step,
        "total": state.total,
        "loss": state.loss,
        "val_loss": state.val_loss,
        "metric": state.metric,
        "eta": state.eta,
        "updated": _when(updated),
        "message": message,
        "embedding": state.embedding_name if state.status == "done" else None,
        "checkpoint_step": state.checkpoint_step,  # where --resume continues from (None: from step 0)
        "kept_step": state.kept_step,
        "previews": [str(path) for path in state.previews],
    }
    if state.resumable and (job.run_dir / "config.toml").is_file():
        where = f"--run-dir {shlex.quote(str(job.run_dir))} --home {shlex.quote(str(runner.home))}"
        row["resume"] = f"tokensmith train {where} --resume"
    elif state.resumable:
        row["message"] = f"{message}; it has no config.toml to resume from: start it again".lstrip("; ")
    return row


def _when(seconds: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
