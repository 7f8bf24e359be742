"""`tokensmith runs`: every training run under HOME/runs and where it stands (running, done, stopped, failed,
ended), read from the run folders as the studio's Train page reads them, with the command that resumes the
ones that did not finish."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time


def register(subparsers, common) -> None:
    """Add `runs` to the `tokensmith` parser."""
    sub = subparsers.add_parser(
        "runs",
        parents=[common],
        help="list training runs: status, step, validation loss, how to resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Examples:\n  tokensmith runs\n  tokensmith runs --json\n\n"
            "One line per run folder under HOME/runs, newest first: its status (starting, running, done,\n"
            "stopped, failed, or ended: the trainer exited without a final record), step, latest validation\n"
            "loss and preview score, and when it last wrote. A finished run's message follows, and a run\n"
            "that can continue shows the command that resumes it."
        ),
    )
    sub.add_argument("--json", action="store_true", help="print the runs as JSON on stdout")
    sub.set_defaults(run=run_runs)


def run_runs(args) -> int:
    from studio.jobs import JobRunner

    runner = JobRunner(args.home)
    rows = [_row(job, runner.state(job)) for job in runner.jobs()]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print(f"no training runs under {runner.runs_dir}: `tokensmith train` starts one", file=sys.stderr)
        return 0
    width = max(len(row["run"]) for row in rows)
    print(f"{'RUN':<{width}}  {'STATUS':<8}  {'STEP':>9}  {'VAL':>7}  {'METRIC':>7}  UPDATED")
    for row in rows:
        step = f"{row['step']}/{row['total']}" if row["total"] else str(row["step"])
        print(
            f"{row['run']:<{width}}  {row['status']:<8}  {step:>9}  {_num(row['val_loss']):>7}  "
            f"{_num(row['metric']):>7}  {row['updated'] or '-'}"
        )
        if row["message"]:
            print(f"  {row['message']}")
        if row["resume"]:
            print(f"  resume: {row['resume']}")
    return 0


def _row(job, state) -> dict:
    progress = job.run_dir / "progress.jsonl"
    updated = progress.stat().st_mtime if progress.exists() else None
    return {
        "run": job.id,
        "run_dir": str(job.run_dir),
        "status": state.status,
        "step": state.step,
        "total": state.total,
        "loss": state.loss,
        "val_loss": state.val_loss,
        "metric": state.metric,
        "eta": state.eta,
        "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(updated)) if updated else None,
        "message": state.message,
        "embedding": state.embedding_name if state.status == "done" else None,
        "resume": f"tokensmith train --run-dir {shlex.quote(str(job.run_dir))} --resume"
        if state.resumable
        else None,
    }


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
