"""The `tokensmith` command: one parser; each subcommand is registered by the module that owns it.

Conventions (DESIGN.md): every subcommand takes `--home DIR` (else $TOKENSMITH_HOME, else ~/.tokensmith) and
`--debug`, before or after the command's name; exit 0 on success, 2 on usage errors (argparse), 1 on other
errors with one line that says what happened and what to do (`--debug` adds the traceback, not another exit
status), 130 when Ctrl-C interrupts it (`tokensmith CMD: interrupted`; `train` and `demo` stop cleanly instead
and exit 1 saying how to go on), 141 when the reader of a pipe stops early. Progress goes to stderr so stdout
stays parseable. Flags are spelled in full: a prefix (`--num` for `--num-images`) is refused, since a flag
added later would change what an old script's prefix means.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

# Each module defines `register(subparsers, common)`; a subcommand sets `run=function(args) -> int | None`.
# Modules import their heavy dependencies (torch, diffusers) inside the run functions so `--help` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "studio.cli_train",
    "studio.cli_demo",
    "studio.cli_ui",
    "studio.cli_demo_world",
    "studio.cli_generate",
    "studio.cli_explore",
    "studio.cli_import",
    "studio.cli_embeddings",
    "studio.cli_vectors",
    "studio.cli_share",
    "studio.cli_runs",
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports when the reader of a pipe stops early
# Into a log file or a pipe a bar is not redrawn in place: every redraw would be kept. There it draws at most
# once every this many seconds (and once when it ends).
LOG_BAR_SECONDS = 30.0


class UsageError(ValueError):
    """A command given without what it needs (a required flag that no config file sets): exit 2."""


def home_dir(override: str | Path | None = None) -> Path:
    """The tokensmith home: `override`, else $TOKENSMITH_HOME, else ~/.tokensmith.

    An empty `override` is a UsageError, not "no override": `--home "$PROJECT_HOME"` with the variable unset
    must not write into the user's own store. An empty $TOKENSMITH_HOME is refused for the same reason
    (`TOKENSMITH_HOME="$PROJECT_HOME" tokensmith ...`); unset, it means ~/.tokensmith."""
    if override is not None and not str(override).strip():
        from trainers.outcome import EMPTY_HOME  # python -m trainers refuses it in the same words

        raise UsageError(EMPTY_HOME)
    if override is not None:
        return Path(override).expanduser()
    from embeddings.errors import TokensmithError
    from trainers.commands import home_from_environment

    try:
        return home_from_environment()
    except TokensmithError as exc:  # the environment of the command line is wrong: a usage error
        raise UsageError(str(exc)) from None


def version() -> str:
    """The installed distribution's version ('0.1.0'), or a note when it runs from a source tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("tokensmith")
    except PackageNotFoundError:
        return "unknown (not installed: `pip install -e .` in the source tree)"


def at_least_one(text: str) -> int:
    """An argparse type: a whole number >= 1 (a usage error, exit 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def bar_options() -> dict:
    """tqdm keyword arguments for a progress bar on stderr: redrawn in place on a terminal; into a log file
    or a pipe, drawn at most every LOG_BAR_SECONDS rather than at every step, and first after that long (a
    shorter job leaves no 0% bar, nor the blanks that erase it, in the log)."""
    if sys.stderr.isatty():
        return {"file": sys.stderr, "dynamic_ncols": True}
    every = LOG_BAR_SECONDS
    return {"file": sys.stderr, "mininterval": every, "maxinterval": every, "delay": every}


def add_common_options(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """--home and --debug, which go before the command's name (`tokensmith --debug list`) or after it."""
    home, debug = (None, False) if defaults else (argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument(
        "--home",
        metavar="DIR",
        default=home,
        help="tokensmith home (default: $TOKENSMITH_HOME or ~/.tokensmith)",
    )
    parser.add_argument(
        "--debug", action="store_true", default=debug, help="show the full traceback on errors"
    )


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand accepts (added as a parent parser). Without defaults: the command's parser
    sets its values after the top level's, and must not reset a --home or --debug given before the command."""
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, defaults=False)
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokensmith",
        description="Train, store, convert, blend and use textual-inversion embeddings.",
        epilog="Run `tokensmith COMMAND --help` for a command's options and an example. --home and --debug "
        "go before or after the command: tokensmith --home DIR list, or tokensmith list --home DIR.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"tokensmith {version()}")
    add_common_options(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_parser()
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers, common)
    for command in subparsers.choices.values():
        # main() reports a stray argument with the command's own usage line, as argparse does its other errors
        command.set_defaults(command_parser=command)
        # `--num 2` for --num-images would mean another flag once one named --number is added
        command.allow_abbrev = False
    return parser


def _is_user_error(exc: BaseException) -> bool:
    """Errors that deserve one line, not a traceback: ours, bad values, missing or clashing files, and an
    image too large to open (PIL's guard is not an OSError)."""
    from PIL import Image

    from embeddings.errors import TokensmithError

    return isinstance(exc, TokensmithError | ValueError | KeyError | OSError | Image.DecompressionBombError)


def user_text(exc: BaseException) -> str:
    """An error's one line: a full or read-only disk that no command worded names the file and what to do
    ("the disk is full while writing out/x.png: free some space, then try again"), not '[Errno 28] ...'."""
    from embeddings.files import write_failure

    return write_failure(exc) or str(exc)


def _unrecognized(extra: list[str], command_parser: argparse.ArgumentParser) -> str:
    """argparse's "unrecognized arguments: ..."; for a flag of the command given before the command's name,
    which only the top level saw, where it goes: "--json goes after the command: tokensmith list --json"."""
    early = [arg for arg in extra if arg in command_parser._option_string_actions]
    if early:
        return f"{early[0]} goes after the command: {command_parser.prog} {early[0]}"
    return f"unrecognized arguments: {' '.join(extra)}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Subparsers hand arguments they do not know to the top-level parser, whose error would name neither the
    # command nor its usage: they are reported here by the command's own parser (exit 2).
    args, extra = parser.parse_known_args(argv)
    command_parser = getattr(args, "command_parser", parser)
    if extra:
        command_parser.error(_unrecognized(extra, command_parser))
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        args.home = home_dir(args.home)
    except UsageError as exc:
        command_parser.error(str(exc))
    if not args.debug:
        # transformers warns on import about optional backends (torchvision) that tokensmith never uses;
        # our own errors say what matters. --debug keeps every library message.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        code = args.run(args)
    except KeyboardInterrupt:
        print(f"tokensmith {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `tokensmith list | head`: the reader has what it wanted. Point stdout at /dev/null so the
        # interpreter's final flush does not fail again, and stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        if args.debug:  # the traceback as well, and still the exit status a script checks for
            traceback.print_exc()
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else user_text(exc)
        from embeddings.text import printable

        # one line, with no raw controls: it may quote a file's name or metadata, and a library's text may
        # span lines (each kept as words, joined)
        message = printable(" ".join(line.strip() for line in str(message).splitlines() if line.strip()))
        if isinstance(exc, UsageError):  # as argparse reports its own usage errors: the usage line first
            command_parser.print_usage(sys.stderr)
        print(f"tokensmith {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
    return EXIT_OK if code is None else code


if __name__ == "__main__":
    # `python -m studio.cli`: run the imported module's main, whose UsageError is the one commands raise
    from studio import cli

    sys.exit(cli.main())
