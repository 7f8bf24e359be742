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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainers",
        description="Train a textual-inversion embedding from a config file.",
        epilog="Example: accelerate launch -m trainers --config ~/.tokensmith/runs/cat/config.toml",
    )
    parser.add_argument("--config", required=True, help="a TOML or YAML training config")
    parser.add_argument("--home", help="tokensmith home (default: $TOKENSMITH_HOME or ~/.tokensmith)")
    parser.add_argument("--resume", action="store_true", help="continue the config's run folder")
    args = parser.parse_args(argv)
    from trainers.config import load
    from trainers.trainer import summary, train

    try:
        cfg = load(args.config, overrides={"resume": True} if args.resume else None)
        emb = train(cfg, home=Path(args.home).expanduser() if args.home else None, echo=_echo)
    except (TokensmithError, ValueError, KeyError, OSError) as exc:
        print(f"python -m trainers: error: {exc}", file=sys.stderr)
        return 1
    if summary(emb).get("end") == "stopped":  # SIGTERM: every process stopped at the same step
        _echo(f"python -m trainers: stopped at step {emb.meta.get('steps')}; continue with --resume")
        return 1
    from trainers.processes import launch_rank

    if launch_rank() == 0:  # one line for a multi-process launch
        _echo(f"learned <{emb.name}> ({emb.num_vectors} vector(s))")
    return 0


def _echo(line: str) -> None:
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
