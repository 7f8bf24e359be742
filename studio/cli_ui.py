"""`tokensmith ui`: start the Streamlit studio on this machine (headless, telemetry off)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from studio.cli_options import add_command

APP_PATH = Path(__file__).resolve().parent / "app" / "main.py"
DEFAULT_PORT = 8501

EXAMPLE = """\
Example:
  tokensmith ui                      # http://127.0.0.1:8501, home ~/.tokensmith
  tokensmith ui --port 8600 --home ./studio-home

The studio trains, browses, blends and generates with the embeddings in the home's store; training jobs run
as `tokensmith train` subprocesses whose run folders live under HOME/runs/ and survive a restart of the UI.
Use --host 0.0.0.0 only on a trusted network: the studio has no login.
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = add_command(
        subparsers,
        common,
        "ui",
        "start the Streamlit studio in the browser",
        EXAMPLE,
        description="Start the tokensmith studio (a Streamlit app) and serve it over HTTP.",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT})"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.set_defaults(run=run)


def streamlit_command(*, host: str, port: int) -> list[str]:
    """The `streamlit run` command line for the studio: headless, no telemetry, no file watching."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--runner.magicEnabled", "false",  # a bare expression must never be written onto the page
        "--client.toolbarMode", "minimal",
        "--global.developmentMode", "false",
    ]  # fmt: skip


def check_port_free(host: str, port: int) -> None:
    """Raise OSError with what to do if `host:port` cannot be bound."""
    if not 1024 <= port <= 65535:  # below 1024 are the system's ports (root only, other services)
        raise ValueError(
            f"--port {port} is not a TCP port the studio can use: choose one between 1024 and 65535"
        )
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror:
            raise OSError(
                f"cannot resolve --host {host!r}: give an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
            ) from None
        except OSError as exc:
            raise OSError(
                f"cannot listen on {host}:{port} ({exc.strerror}): another program (or studio) uses it; "
                f"pass --port N to choose another"
            ) from None


def run(args: argparse.Namespace) -> int:
    check_port_free(args.host, args.port)
    home: Path = args.home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"TOKENSMITH_HOME": str(home), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    print(
        f"tokensmith studio: http://{args.host}:{args.port}  (home {home}; Ctrl-C stops it)", file=sys.stderr
    )
    command = streamlit_command(host=args.host, port=args.port)
    os.execve(command[0], command, env)  # the studio takes over this process: signals reach it directly
    return 0  # not reached
