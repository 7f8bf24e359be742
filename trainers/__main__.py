"""`python -m trainers --config run.toml` (and, on many GPUs,
`accelerate launch -m trainers --config run.toml`).

Runs the same training as `tokensmith train`, configured from a file (usually a run folder's config.toml),
with optional `--home DIR`; the store lives under HOME/embeddings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embeddings.errors import TokensmithError
from trainers.runfolder import progress_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainers",
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
        parser.error('--home is empty: give a folder (is the variable in --home "$VAR" unset?)')
    from trainers.configfile import load
    from trainers.ending import kept_note
    from trainers.hub import UploadError
    from trainers.processes import launch_rank
    from trainers.storing import summary
    from trainers.trainer import RunStopped, train

    failed_upload = None
    try:
        overrides = {key: True for key in ("resume", "overwrite") if getattr(args, key)}
        if args.run_dir:  # a run folder's config.toml names its own folder, which refuses a second run
            overrides["run_dir"] = args.run_dir
        cfg = load(args.config, overrides=overrides)
        home = Path(args.home).expanduser() if args.home else None
        emb = train(cfg, home=home, echo=_echo, on_progress=_progress_line if launch_rank() == 0 else None)
    except RunStopped as exc:  # a SIGTERM or Ctrl-C while the model loaded: asked for, not an error
        if launch_rank() == 0:  # one line for a multi-process launch
            _echo(f"python -m trainers: {exc}")
        return 1
    except UploadError as exc:  # the run is done and stored: its result is said, then the upload's error
        if exc.embedding is None:
            print(f"python -m trainers: error: {exc}", file=sys.stderr)
            return 1
        emb, failed_upload = exc.embedding, exc
    except (TokensmithError, ValueError, KeyError, OSError) as exc:
        print(f"python -m trainers: error: {exc}", file=sys.stderr)
        return 1
    info = summary(emb)
    if info.get("end") == "stopped":  # SIGTERM: every process stopped at the same step; the main one says so
        if launch_rank() == 0:
            _echo(f"python -m trainers: stopped at step {emb.meta.get('steps')}; continue with --resume")
        return 1
    if launch_rank() == 0:  # one line for a multi-process launch
        kept = kept_note(int(emb.meta.get("steps", 0)), int(info.get("trained_steps", 0)))
        _echo(f"learned <{emb.name}> ({emb.num_vectors} vector(s){'; ' + kept if kept else ''})")
    if failed_upload is not None:
        _echo(f"python -m trainers: error: {failed_upload}")
        return 1
    return 0


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
