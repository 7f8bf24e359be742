"""`python -m trainers --config run.toml` (and, on many GPUs,
`accelerate launch -m trainers --config run.toml`).

Runs the same training as `tokensmith train`, configured from a file (usually a run folder's config.toml),
with optional `--home DIR`; the store lives under HOME/embeddings. It ends in `tokensmith train`'s words and
exit statuses (trainers/outcome.py), all on stderr: its output is a launch's log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embeddings.errors import TokensmithError
from trainers.outcome import EMPTY_HOME
from trainers.runfolder import progress_line

PROGRAM = "python -m trainers"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Train a textual-inversion embedding from a config file.",
        epilog="Example: accelerate launch -m trainers --config ~/.tokensmith/runs/cat/config.toml",
    )
    parser.add_argument("--config", required=True, help="a TOML or YAML training config")
    parser.add_argument("--home", help="tokensmith home (default: $TOKENSMITH_HOME or ~/.tokensmith)")
    parser.add_argument("--resume", action="store_true", help="continue the config's run folder")
    parser.add_argument("--run-dir", metavar="DIR", help="run in this folder instead of the config's run_dir")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a stored embedding of the same name"
    )
    args = parser.parse_args(argv)
    if args.home is not None and not args.home.strip():  # as the CLI: never the user's own home by accident
        parser.error(EMPTY_HOME)
    from trainers.commands import home_from_environment
    from trainers.configfile import load
    from trainers.hub import UploadError
    from trainers.outcome import finish, stopped_early
    from trainers.processes import launch_rank
    from trainers.trainer import RunStopped, train

    main_process = launch_rank() == 0
    failed_upload = None
    try:
        overrides = {key: True for key in ("resume", "overwrite") if getattr(args, key)}
        if args.run_dir:  # a run folder's config.toml names its own folder, which refuses a second run
            overrides["run_dir"] = args.run_dir
        cfg = load(args.config, overrides=overrides)
        # the home the run stores in, named in the command that continues it, as `tokensmith train` names it
        home = Path(args.home).expanduser() if args.home else home_from_environment()
        emb = train(cfg, home=home, echo=_echo, on_progress=_progress_line if main_process else None)
    except RunStopped as exc:  # a SIGTERM or Ctrl-C while the model loaded: asked for, not an error
        return report(stopped_early(exc), quiet=not main_process)
    except UploadError as exc:  # the run is done and stored: its result is said, then the upload's error
        if exc.embedding is None:  # refused before any result: an error like the others below
            print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
            return 1
        emb, failed_upload = exc.embedding, exc
    except (TokensmithError, ValueError, KeyError, OSError) as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 1
    outcome = finish(emb, home=home, push_to_hub=cfg.push_to_hub, failed_upload=failed_upload)
    return report(outcome, quiet=not main_process)


def report(outcome, *, quiet: bool = False) -> int:
    """Say a run's Outcome in `tokensmith train`'s lines, all on stderr (a launch's log, like the progress
    lines), and return its exit status; nothing when `quiet` (not the main process of a launch)."""
    if not quiet:
        for line in outcome.said:
            _echo(line)
        for note in outcome.notes:
            _echo(f"{PROGRAM}: {note}")
    return outcome.exit_code


def _progress_line(record: dict) -> None:
    """A line for each record that validated or scored previews (logs of a launch read better than a bar)."""
    if record.get("val_loss") is None and record.get("metric") is None:
        return
    values = {key: record.get(key) for key in ("loss", "val_loss", "metric", "eta")}
    _echo(progress_line(record["step"], record["total"], **values))


def _echo(line: str) -> None:
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
