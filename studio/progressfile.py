"""progress.jsonl, read a little at a time: a run's log grows by a row a step, and the studio polls it every
2 s, so a poll parses only the lines written since the last (a per-path cache, read again from the start when
the file was replaced, shortened or rewritten in place); `tokensmith runs` reads only its end when that holds
all a listing shows."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

FINAL_EVENTS = ("done", "failed", "stopped")


PROGRESS_CACHE_RUNS = 8  # logs whose parsed rows are kept between polls (100k rows are tens of MB)
TAIL_BYTES = 64 * 1024  # what `tokensmith runs` reads of a long log: its newest rows


@dataclass
class _ReadSoFar:
    """What one progress.jsonl said up to `offset` (the end of its last complete line), kept between polls
    so that a poll parses only the lines written since."""

    inode: int
    offset: int = 0
    last_line: bytes = b""  # the line that ends at `offset`: not there any more, the file was rewritten
    rows: list[dict] = field(default_factory=list)
    final: dict | None = None
    damaged: dict | None = None  # the first row whose step is not a step number


_read_so_far: OrderedDict[str, _ReadSoFar] = OrderedDict()
_read_lock = threading.Lock()  # tabs poll from their own script threads


def read_progress(path: Path) -> tuple[list[dict], dict | None]:
    """Progress rows and the final event of a `progress.jsonl`; a half-written last line is skipped."""
    rows, final, _damaged = read_progress_checked(path)
    return rows, final


def read_progress_checked(path: Path) -> tuple[list[dict], dict | None, dict | None]:
    """(rows, final event, first damaged row) of a `progress.jsonl`, reading only the bytes written since the
    last call for the same path; from the start again when the file was replaced (another inode), shrank, or
    no longer ends its read part with the line it did (a resume rewrites the log to its checkpoint's rows)."""
    key = str(path)
    with _read_lock:
        try:
            handle = open(path, "rb")  # noqa: SIM115 (closed by the `with` below)
        except FileNotFoundError:
            _read_so_far.pop(key, None)
            return [], None, None
        with handle:
            info = os.fstat(handle.fileno())
            seen = _read_so_far.pop(key, None)
            if not _continues(seen, info, handle):
                seen = _ReadSoFar(info.st_ino)
            handle.seek(seen.offset)
            pending = _parse_lines(seen, handle.read())
        _read_so_far[key] = seen
        while len(_read_so_far) > PROGRESS_CACHE_RUNS:
            _read_so_far.popitem(last=False)
        rows, final, damaged = list(seen.rows), seen.final, seen.damaged
    if pending:  # a last line without its newline: used when whole (as a full read would), never kept
        final, damaged = _take(_loads(pending), rows, final, damaged)
    return rows, final, damaged


def _continues(seen: _ReadSoFar | None, info: os.stat_result, handle) -> bool:
    """Whether the open file is the one `seen` read, as it was or grown: the same inode, no shorter, and the
    last line read still where it was (a resume rewrites the log: by replacing it, or in place)."""
    if seen is None or seen.inode != info.st_ino or info.st_size < seen.offset:
        return False
    if not seen.last_line:
        return True
    handle.seek(seen.offset - len(seen.last_line))
    return handle.read(len(seen.last_line)) == seen.last_line


def _parse_lines(seen: _ReadSoFar, data: bytes) -> bytes:
    """Take the complete lines of `data` (the bytes after `seen.offset`) into `seen`; the unfinished rest."""
    end = data.rfind(b"\n") + 1
    for line in data[:end].split(b"\n")[:-1]:
        seen.final, seen.damaged = _take(_loads(line), seen.rows, seen.final, seen.damaged)
    if end:
        seen.last_line = data[data.rfind(b"\n", 0, end - 1) + 1 : end]
        seen.offset += end
    return data[end:]


def _loads(line: bytes) -> object:
    """One line's JSON value, or None when it is not JSON (the trainer is writing it right now)."""
    try:
        return json.loads(line.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None


def _take(item: object, rows: list[dict], final: dict | None, damaged: dict | None):
    """Add one line's value to (rows, final, damaged): a row is appended (after a final event too: a resumed
    run writes rows after an earlier `stopped`), a final event replaces the one before. (final, damaged)."""
    if not isinstance(item, dict):
        return final, damaged
    event = item.get("event")
    if event in FINAL_EVENTS:
        return item, damaged
    if event is None and "step" in item:
        rows.append(item)
        if damaged is None and whole_number(item["step"]) is None:
            damaged = item
        return None, damaged
    return final, damaged


def read_progress_tail(path: Path, nbytes: int = TAIL_BYTES) -> tuple[list[dict], dict | None] | None:
    """(rows, final event) from the last `nbytes` of a long `progress.jsonl`: what a run's summary shows, or
    None when they may not hold it (a log that short, no whole row, a damaged row, no validation loss or
    preview score, not the stored step's row): then read it whole (read_progress)."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size <= nbytes:
            return None
        handle.seek(size - nbytes)
        lines = handle.read().split(b"\n")[1:]  # the first is most likely the end of a line
    rows: list[dict] = []
    final, damaged = None, None
    for line in lines:
        final, damaged = _take(_loads(line), rows, final, damaged)
    if (
        not rows
        or damaged is not None
        or None in (latest_number(rows, "val_loss"), latest_number(rows, "metric"))
    ):
        return None
    kept = whole_number(final.get("kept")) if final else None
    if kept is not None and row_at(rows, kept) is None:
        return None
    return rows, final


def number_in(row: dict, key: str) -> float | None:
    """row[key] as a float when it is a number (not a bool, which JSON's true would give), else None."""
    value = row.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def whole_number(value) -> int | None:
    """`value` as a step count when it is one (5, 5.0), else None (None, "x", True, 2.5, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():  # nan and inf too
        return None
    return int(value)


def latest_number(rows: list[dict], key: str) -> float | None:
    """The newest number logged under `key` (validation and preview scores come every N steps only)."""
    return next((value for row in reversed(rows) if (value := number_in(row, key)) is not None), None)


def row_at(rows: list[dict], step: int) -> dict | None:
    """The newest row of `step` (a resume may have logged it twice), or None."""
    return next((row for row in reversed(rows) if row.get("step") == step), None)
