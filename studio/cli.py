"""The `tokensmith` command: one parser; each subcommand is registered by the module that owns it.

Conventions (DESIGN.md): every subcommand takes `--home DIR` (else $TOKENSMITH_HOME, else ~/.tokensmith) and
`--debug`; exit 0 on success, 2 on usage errors (argparse), 1 on other errors with one line that says what
happened and what to do. Progress goes to stderr so stdout stays parseable.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Each module defines `register(subparsers, common)`; a subcommand sets `run=function(args) -> int | None`.
# Modules import their heavy dependencies (torch, diffusers) inside the run functions so `--help` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "studio.cli_train",
    "studio.cli_ui",
    "studio.cli_demo_world",
    "studio.cli_generate",
    "studio.cli_explore",
    "studio.cli_import",
    "studio.cli_embeddings",
    "studio.cli_share",
    "studio.cli_runs",
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports when the reader of a pipe stops early


def home_dir(override: str | Path | None = None) -> Path:
    """The tokensmith home: `override`, else $TOKENSMITH_HOME, else ~/.tokensmith."""
    chosen = override or os.environ.get("TOKENSMITH_HOME") or "~/.tokensmith"
    return Path(chosen).expanduser()


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand accepts (added as a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home", metavar="DIR", help="tokensmith home (default: $TOKENSMITH_HOME or ~/.tokensmith)"
    )
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokensmith",
        description="Train, store, convert, blend and use textual-inversion embeddings.",
        epilog="Run `tokensmith COMMAND --help` for a command's options and an example.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_parser()
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers, common)
    return parser


class UsageError(ValueError):
    """A command given without what it needs (a required flag that no config file sets): exit 2."""


def _is_user_error(exc: BaseException) -> bool:
    """Errors that deserve one line, not a traceback: ours, bad values, missing or clashing files, and an
    image too large to open (PIL's guard is not an OSError)."""
    from PIL import Image

    from embeddings.errors import TokensmithError

    return isinstance(exc, TokensmithError | ValueError | KeyError | OSError | Image.DecompressionBombError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.home = home_dir(args.home)
    if not args.debug:
        # transformers warns on import about optional backends (torchvision) that tokensmith never uses;
        # our own errors say what matters. --debug keeps every library message.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        code = args.run(args)
    except KeyboardInterrupt:
        print("tokensmith: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `tokensmith list | head`: the reader has what it wanted. Point stdout at /dev/null so the
        # interpreter's final flush does not fail again, and stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if args.debug or not _is_user_error(exc):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"tokensmith {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
    return EXIT_OK if code is None else code


if __name__ == "__main__":
    sys.exit(main())
