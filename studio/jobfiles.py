"""What a job's files and process say: job.json read strictly, when a run folder began and was last claimed,
and when a process started (the studio never trusts a pid alone: studio/jobs.py)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from embeddings.files import atomic_write_bytes

try:
    import fcntl
except ImportError:  # Windows: no flock; starts there are not serialised across processes
    fcntl = None

# job.json's fields: the types each may have, and how a message names them. A job.json that breaks these is
# damaged: the job lists as unreadable rather than being guessed at.
JOB_FIELDS = {
    "name": ((str,), "a string"),
    "command": ((list,), "a list of words"),
    "created": ((int, float), "a number"),
    "pid": ((int,), "a process id"),
    "launched": ((int, float), "a number"),
    "cancelled": ((bool,), "true or false"),
    "earlier": ((list,), "a list of words"),
}


def job_record(path: Path) -> dict:
    """What job.json says ({} for a run the CLI started: it has none); ValueError naming what is wrong when it
    is not a JSON object with fields of the right types, OSError when it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
    for key, (types, kind) in JOB_FIELDS.items():
        value = data.get(key)
        wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if value is not None and wrong:
            raise ValueError(f"its {key} is {json.dumps(value)[:40]}, not {kind}")
    for key in ("command", "earlier"):
        if not all(isinstance(word, str) for word in data.get(key) or ()):
            raise ValueError(f"its {key} is not {JOB_FIELDS[key][1]}")
    return data


def created_at(run_dir: Path) -> float:
    """When the run began, for a folder without job.json: its oldest file's time. The folder's own time
    changes at every atomic write, and a resume rewrites config.toml and progress.jsonl, but not images.json
    or the latent cache."""
    try:
        times = [entry.stat().st_mtime for entry in run_dir.iterdir() if entry.is_file()]
        return min(times, default=run_dir.stat().st_mtime)
    except OSError:
        return 0.0


def newer_than(run_dir: Path, when: float) -> bool:
    """Whether a trainer wrote the run folder after `when`: its pid file (a claim) or progress.jsonl."""
    for name in ("pid", "progress.jsonl"):
        try:
            if (run_dir / name).stat().st_mtime > when:
                return True
        except OSError:
            continue
    return False


def started_at(pid: int) -> float | None:
    """When process `pid` started (epoch seconds, to about a second): field 22 of /proc/PID/stat, in clock
    ticks after boot. None where there is no /proc (not Linux) or no such process."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def write_atomic(path: Path, text: str) -> None:
    """Write `path` completely or not at all: a temp file, fsynced, renamed; removed when the write fails."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def one_at_a_time(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` itself (no file is made in it) for the `with` block: other processes, and
    other threads with their own `with`, wait at its start. Held for milliseconds (a job's launch), so
    waiting is silent. Best effort where the filesystem has no flock."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # ENOLCK, EOPNOTSUPP: unlocked, as before there was a lock
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
