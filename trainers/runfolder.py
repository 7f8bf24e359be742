"""The run folder: everything a run writes, and the only thing the studio UI reads.

    config.toml                      resolved config          command.txt   the equivalent commands
    progress.jsonl                   one JSON object a line: {"step", "total", "loss", "val_loss",
                                     "metric", "lr", "elapsed", "eta"}; the last line is
                                     {"event": "done"|"failed"|"stopped", "message", "name"}
    previews/step-000050.png         fixed-seed preview images
    snapshots/step-000050.safetensors   embedding snapshots (canonical files)
    checkpoints/step-000050/         Accelerate save_state (optimizer, RNG) + rows, stopper, step
    latents.safetensors              the run's latent cache (trainers/latents.py), read again on resume
    images.json, templates.json      the images' (and a .txt template file's) sha256 when the run began:
                                     a resume checks they are unchanged
    pid                              the training process id (SIGTERM it to stop cleanly), locked
                                     (flock) by that process for as long as it lives: see RunFolder.claim

Every file is written atomically (temp file + rename), so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from embeddings.errors import TokensmithError, first_line
from embeddings.files import RUN_TEMP_PATTERN, TEMP_PATTERN, final_path, run_temp_path
from trainers import runlock
from trainers.commands import resume_command
from trainers.writes import DiskFull, atomic_text, disk_full, writing

STEP_DIR = re.compile(r"^step-(\d{6,})$")
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def progress_line(
    step: int,
    total: int | None,
    *,
    loss: float | None = None,
    val_loss: float | None = None,
    metric: float | None = None,
    eta: float | None = None,
    elapsed: float | None = None,
) -> str:
    """A progress record as one line: 'step 40/150 · loss 0.1234 · val 0.1100 · metric 29.41 · ETA 12 s'
    (without an ETA, the elapsed seconds: '95 s')."""
    parts = [f"step {step}/{total}" if total else f"step {step}"]
    for label, value, style in (("loss", loss, ".4f"), ("val", val_loss, ".4f"), ("metric", metric, ".4g")):
        if value is not None:
            parts.append(f"{label} {value:{style}}")
    if eta is not None:
        parts.append(f"ETA {eta:.0f} s")
    elif elapsed is not None:
        parts.append(f"{elapsed:.0f} s")
    return " · ".join(parts)


@dataclass(frozen=True)
class RunFolder:
    """Paths and writers of one run folder."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def progress_path(self) -> Path:
        return self.root / "progress.jsonl"

    @property
    def command_path(self) -> Path:
        """The equivalent commands of the run (`tokensmith train ...`, `accelerate launch ...`)."""
        return self.root / "command.txt"

    @property
    def begun(self) -> bool:
        """Whether a trainer has started here: it wrote the config (a run killed while it prepared) or
        progress."""
        return self.progress_path.exists() or self.config_path.exists()

    @property
    def previews(self) -> Path:
        return self.root / "previews"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latents_path(self) -> Path:
        return self.root / "latents.safetensors"

    def create(self, *, resume: bool, main: bool = True) -> None:
        """Make the folder; a fresh run refuses a folder that already holds a run (unless resuming), but
        takes over one whose run never took a step (refused while preparing: the retry with the advised fix).
        The main process removes the temp files of killed writes (see `remove_stale_temps`): only it writes
        them, and a process of the launch on another machine cannot tell a live write of it from a dead
        one's."""
        if not resume and self.progress_path.exists() and self.never_trained():
            self.progress_path.unlink()  # a run refused before its first step (its settings): nothing to keep
        if not resume and self.progress_path.exists():
            raise TokensmithError(
                f"run folder {self.root} already holds a run; pass --resume to continue it or choose "
                "another --run-dir"
            )
        with self._writable():
            for folder in (self.root, self.previews, self.snapshots, self.checkpoints):
                folder.mkdir(parents=True, exist_ok=True)
        if main:
            self.remove_stale_temps()

    def remove_stale_temps(self) -> list[Path]:
        """Remove the temp files that killed writes of this run left ('.config.toml.tmp-PID', a preview's, the
        latent cache's, a snapshot's), whose process is gone; returns what was removed. Checkpoint temp
        folders are `prune_checkpoints`'. Never raises: litter must not stop a run."""
        removed = []
        for folder in (self.root, self.previews, self.snapshots):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                match = RUN_TEMP_PATTERN.fullmatch(entry.name) or TEMP_PATTERN.fullmatch(entry.name)
                pid = int(match["pid"]) if match else None
                if pid is None or pid == os.getpid() or runlock.pid_alive(pid):
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
                except OSError:
                    continue
        return removed

    @contextlib.contextmanager
    def _writable(self) -> Iterator[None]:
        """A run folder that cannot be made or written (a read-only disk, no permission) as one line that
        names it and the file, and says what to do."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in NOT_WRITABLE or exc.strerror is None:
                raise
            named = final_path(os.fsdecode(exc.filename)) if exc.filename is not None else self.root
            raise TokensmithError(
                f"cannot write the run folder {self.root} ({named}: {exc.strerror}): make it writable, or "
                "pass another --run-dir"
            ) from None

    def write_config(self, toml_text: str, commands: list[str]) -> None:
        atomic_text(self.config_path, toml_text)
        atomic_text(self.command_path, "\n".join(commands) + "\n")

    def write_image_list(self, entries: list) -> None:
        atomic_text(self.root / "images.json", json.dumps(entries) + "\n")

    def read_image_list(self) -> list | None:
        """What `write_image_list` wrote when the run began; None for a run from before it was written."""
        try:
            return json.loads((self.root / "images.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_template_record(self, record: dict | None) -> None:
        """The .txt template file's path and sha256 when the run began (None: a named template set)."""
        path = self.root / "templates.json"
        if record is None:
            path.unlink(missing_ok=True)
        else:
            atomic_text(path, json.dumps(record) + "\n")

    def read_template_record(self) -> dict | None:
        """What `write_template_record` wrote; None for a named set, or a run from before it was written."""
        try:
            record = json.loads((self.root / "templates.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    @property
    def pid_path(self) -> Path:
        return self.root / "pid"

    def write_pid(self) -> None:
        """Record this process as the folder's trainer: nothing to do after `claim` (which wrote it), else
        claim the folder now; refused while another live trainer holds it."""
        if runlock.claimed_here(self.root):
            return
        if (holder := self.claim()) is not None:
            raise TokensmithError(
                f"run folder {self.root} is in use by process {holder}; pass another --run-dir"
            )

    def claim(self) -> int | None:
        """Take the folder for this process, until `release` or the process ends; the pid of a live trainer
        that holds it, else None (claimed; this process's own claim counts as claimed). Two runs started at
        once under one name must not share a folder. The claim is a flock on the `pid` file (trainers/
        runlock.py): a pid file left by a killed run holds nothing."""
        if self.root.exists() and not self.root.is_dir():
            raise TokensmithError(f"run folder {self.root} is a file; pass --run-dir with a folder")
        with self._writable():
            self.root.mkdir(parents=True, exist_ok=True)
            return runlock.claim(self.root)

    def holder(self) -> int | None:
        """The pid of the live trainer that holds the folder (this process, if it does), else None."""
        return runlock.holder(self.root)

    def alive(self) -> bool:
        """Whether a live trainer holds the folder."""
        return runlock.alive(self.root)

    def release(self) -> None:
        """Give up the claim: remove the `pid` file when it is still this process's, and drop its lock."""
        runlock.release(self.root)

    def log(self, record: dict, *, durable: bool = False) -> None:
        """Append one JSON line, flushed (readers skip a torn last line); `durable` also fsyncs it.

        Step lines are not fsynced: at tens of steps a second that would cost more than the step's own
        bookkeeping, and a crash loses only lines that the resumed run writes again.
        """
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        line = json.dumps(clean, allow_nan=False, default=float) + "\n"
        path = self.progress_path
        with writing("the run's progress.jsonl", path), open(path, "ab", buffering=0) as handle:
            start = handle.seek(0, os.SEEK_END)
            try:
                rest = memoryview(line.encode("utf-8"))
                while rest:  # an unbuffered write may take part of the line
                    rest = rest[handle.write(rest) :]
                if durable:
                    os.fsync(handle.fileno())
            except OSError:  # no torn line: the next record (a `failed` event) must start a line
                os.ftruncate(handle.fileno(), start)
                raise

    def event(self, kind: str, message: str, *, name: str = "", **extra) -> None:
        """The closing line: kind is done, failed or stopped."""
        self.log({"event": kind, "message": message, "name": name, **extra}, durable=True)

    def read_progress(self) -> list[dict]:
        """Every complete JSON line of progress.jsonl (a torn last line after a kill is skipped)."""
        if not self.progress_path.exists():
            return []
        records = []
        for line in self.progress_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_progress_after(self, step: int) -> None:
        """On resume: keep only the records up to `step`, so the log reads as one uninterrupted run."""
        kept = [r for r in self.read_progress() if "event" not in r and r.get("step", 0) <= step]
        atomic_text(self.progress_path, "".join(json.dumps(r) + "\n" for r in kept))

    def preview_path(self, step: int) -> Path:
        return self.previews / f"step-{step:06d}.png"

    def save_preview(self, step: int, image) -> Path:
        path = self.preview_path(step)
        tmp = run_temp_path(path)
        with writing(f"the preview of step {step}", path, temp=tmp):
            image.save(tmp, format="PNG")
            os.replace(tmp, path)
        return path

    def snapshot_path(self, step: int) -> Path:
        return self.snapshots / f"step-{step:06d}.safetensors"

    @property
    def final_path(self) -> Path:
        """What the run stored (a run killed after its store write finds it here on resume)."""
        return self.snapshots / "final.safetensors"

    # --- checkpoints ---
    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    def never_trained(self) -> bool:
        """Whether the run here took no step and saved no checkpoint (it failed or stopped while preparing,
        e.g. refused for its resolution), so a fresh run may take the folder over with nothing lost."""
        if self.checkpoint_step() is not None:
            return False
        try:
            lines = self.progress_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return False
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                return False  # not a log this version wrote: leave it alone
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > 0:
                return False
        return True

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder (half-written ones have a .tmp name and are ignored)."""
        if not self.checkpoints.is_dir():
            return None
        found = [p for p in self.checkpoints.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
        return max(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)), default=None)

    def checkpoint_step(self) -> int | None:
        """The step of the newest complete checkpoint, None when there is none."""
        latest = self.latest_checkpoint()
        return int(STEP_DIR.match(latest.name).group(1)) if latest else None

    def prune_checkpoints(self, keep: int = 2) -> None:
        """Keep the newest `keep` checkpoints and remove stale temp folders."""
        if not self.checkpoints.is_dir():
            return
        for stale in self.checkpoints.glob(".*.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        found = sorted(
            (p for p in self.checkpoints.iterdir() if p.is_dir() and STEP_DIR.match(p.name)),
            key=lambda p: int(STEP_DIR.match(p.name).group(1)),
        )
        for old in found[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def disk_full_advice(exc: BaseException, folder: RunFolder, home: Path) -> TokensmithError | None:
    """A one-line error for a run whose disk filled up: what it was writing and the command that continues
    it once there is space; None for any other exception."""
    if isinstance(exc, DiskFull):
        what, path = exc.what, exc.path
    elif disk_full(exc):  # a write not named by `writing`
        what, path = "the run's files", getattr(exc, "filename", None) or folder.root
    else:
        return None
    step = folder.checkpoint_step()
    if folder.config_path.exists():
        kept = f"it continues from its checkpoint of step {step}" if step else "it starts again from step 0"
        then = f"run `{resume_command(folder.root, home)}` (nothing written so far is lost; {kept})"
    else:
        then = "run the same command again (the run had not begun)"
    cause = exc.__cause__ if isinstance(exc, DiskFull) and exc.__cause__ is not None else exc
    said = f"{type(cause).__name__}: {first_line(cause)[:160]}"
    return TokensmithError(
        f"the disk is full while writing {what} ({path}; {said}): free space there and {then}"
    )
