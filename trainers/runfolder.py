"""The run folder: everything a run writes, and the only thing the studio UI reads.

    config.toml                      resolved config          command.txt   the equivalent commands
    progress.jsonl                   one JSON object a line: {"step", "total", "loss", "val_loss",
                                     "metric", "lr", "elapsed", "eta"}; the last line is
                                     {"event": "done"|"failed"|"stopped", "message", "name"}
    previews/step-000050.png         fixed-seed preview images
    snapshots/step-000050.safetensors   embedding snapshots (canonical files)
    checkpoints/step-000050/         Accelerate save_state (optimizer, RNG) + rows, stopper, step
    latents.safetensors              the run's latent cache (trainers/latents.py), read again on resume
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
from trainers.commands import resume_command

try:
    import fcntl
except ImportError:  # Windows: no flock; a live process with the pid file's pid holds the folder instead
    fcntl = None

STEP_DIR = re.compile(r"^step-(\d{6,})$")
# torch's zip writer fails without saying why ("unexpected pos 64 vs 0", "basic_ios::clear: iostream error"):
# with less than this free on the disk, the reason is taken to be a full disk (the failed write has just used
# up what was left)
LOW_SPACE = 1 << 20
ZIP_WRITER_WORDS = ("unexpected pos", "iostream error", "PytorchStreamWriter")  # what torch's writer says
# The run folders this process has claimed: (st_dev, st_ino) of the folder -> its locked pid file descriptor.
# A flock belongs to an open file, not to a process, so this process's own test of its pid file would find it
# locked "by another run": it asks here first.
_CLAIMS: dict[tuple[int, int], int] = {}


class DiskFull(TokensmithError):
    """A write of the run failed because its disk is full; `what` names the file as a user knows it."""

    def __init__(self, what: str, path: Path) -> None:
        super().__init__(f"the disk is full while writing {what} ({path})")
        self.what, self.path = what, Path(path)


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says that a disk is full: ENOSPC (or a quota), which safetensors words in its message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(words in str(exc) for words in ("No space left on device", "Disk quota exceeded"))


def _free_bytes(path: Path) -> float:
    there = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        return shutil.disk_usage(there).free if there else math.inf
    except OSError:
        return math.inf


@contextlib.contextmanager
def writing(what: str, path: Path, *, temp: Path | None = None) -> Iterator[None]:
    """Turn a full disk while writing `path` into DiskFull naming `what`; `temp` (a half-written file or
    folder of this write) is removed on any failure, so a full disk is not left fuller."""
    try:
        yield
    except BaseException as exc:
        # torch's writer says nothing of the cause: asked before the temp file gives its space back
        full = disk_full(exc) or (
            isinstance(exc, RuntimeError)
            and any(words in str(exc) for words in ZIP_WRITER_WORDS)
            and _free_bytes(Path(path)) < LOW_SPACE
        )
        if temp is not None:
            if temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)
        if full:
            raise DiskFull(what, path) from exc
        raise


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(f"the run's {path.name}", path, temp=tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


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


def read_pid(path: Path) -> int | None:
    """The process id in a `pid` file, or None when it is missing or unreadable."""
    try:
        return int(path.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int | None) -> bool:
    """True if a process with this id exists (a zombie child counts until it is reaped)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _pid_in(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 64, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _probe(path: Path) -> tuple[bool, int | None]:
    """Whether a live trainer holds the pid file `path` locked, and the pid it wrote there. A shared,
    non-blocking lock, dropped at once: it fails only against a trainer's exclusive one, and never against
    another reader's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a fifo in its place does not hang
    except FileNotFoundError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _pid_in(fd)  # claim writes the pid before the file takes its name: never empty
        return False, None
    finally:
        os.close(fd)  # drops the shared lock with it


@contextlib.contextmanager
def _one_claimant(root: Path) -> Iterator[None]:
    """Claimants of one folder, one at a time (a lock on the folder itself, held for microseconds): the test
    of the old pid file and the new one taking its name must not interleave with another's."""
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _locked_pid_file(path: Path) -> int:
    """Write this process's pid to a new file, lock it and give it `path`'s name; the open, locked descriptor.

    Locked before it is renamed, a pid file at `path` is never seen unlocked while its trainer lives, nor
    empty, so an exclusive lock there always comes with the pid of the process that holds it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with writing("the run's pid file", path, temp=tmp):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else can know this file yet
            os.write(fd, f"{os.getpid()}\n".encode())
            os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


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

    def create(self, *, resume: bool) -> None:
        """Make the folder; a fresh run refuses a folder that already holds a run (unless resuming)."""
        if not resume and self.progress_path.exists():
            raise TokensmithError(
                f"run folder {self.root} already holds a run; pass --resume to continue it or choose "
                "another --run-dir"
            )
        for folder in (self.root, self.previews, self.snapshots, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)

    def write_config(self, toml_text: str, commands: list[str]) -> None:
        _atomic_text(self.config_path, toml_text)
        _atomic_text(self.root / "command.txt", "\n".join(commands) + "\n")

    def write_image_list(self, entries: list) -> None:
        _atomic_text(self.root / "images.json", json.dumps(entries) + "\n")

    def read_image_list(self) -> list | None:
        """What `write_image_list` wrote when the run began; None for a run from before it was written."""
        try:
            return json.loads((self.root / "images.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @property
    def pid_path(self) -> Path:
        return self.root / "pid"

    def _key(self) -> tuple[int, int] | None:
        try:
            found = os.stat(self.root)
        except OSError:
            return None
        return found.st_dev, found.st_ino

    def write_pid(self) -> None:
        """Record this process as the folder's trainer: nothing to do after `claim` (which wrote it), else
        claim the folder now; refused while another live trainer holds it."""
        if self._key() in _CLAIMS:
            return
        if (holder := self.claim()) is not None:
            raise TokensmithError(
                f"run folder {self.root} is in use by process {holder}; pass another --run-dir"
            )

    def claim(self) -> int | None:
        """Take the folder for this process, until `release` or the process ends; the pid of a live trainer
        that holds it, else None (claimed; this process's own claim counts as claimed). Two runs started at
        once under one name must not share a folder.

        The claim is an exclusive `flock` on the `pid` file, held for the trainer's whole life: the kernel
        drops it however the process ends (SIGKILL, the OOM killer, a reboot), so a pid file left behind holds
        nothing, whatever process has its pid now. Only the main process of a multi-process launch claims (the
        others share its folder). A child forked without exec (a data-loader worker) shares the lock until it
        exits too. Where there is no flock (Windows) a live process with the file's pid holds the folder,
        which a reused pid can fool.
        """
        if self.root.exists() and not self.root.is_dir():
            raise TokensmithError(f"run folder {self.root} is a file; pass --run-dir with a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        if self._key() in _CLAIMS:
            return None
        if fcntl is None:
            return self._claim_by_pid()
        with _one_claimant(self.root):
            held, holder = _probe(self.pid_path)
            if held:
                return holder or 0  # 0: a locker that wrote no pid (not a tokensmith trainer)
            _CLAIMS[self._key()] = _locked_pid_file(self.pid_path)
        return None

    def _claim_by_pid(self) -> int | None:
        """`claim` without flock: an exclusive create of the pid file, or a pid file whose process is gone."""
        try:
            handle = os.open(self.pid_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = read_pid(self.pid_path)
            if holder and holder != os.getpid() and pid_alive(holder):
                return holder
            _atomic_text(self.pid_path, f"{os.getpid()}\n")  # a finished or killed run's pid: free
            return None
        with os.fdopen(handle, "w") as out:
            out.write(f"{os.getpid()}\n")
        return None

    def holder(self) -> int | None:
        """The pid of the live trainer that holds the folder (this process, if it does), else None: a pid
        file without its lock is a dead run's, even when another process has that pid now. Raises OSError
        when the pid file is there but cannot be opened."""
        if self._key() in _CLAIMS:
            return os.getpid()
        if fcntl is None:
            pid = read_pid(self.pid_path)
            return pid if pid_alive(pid) else None
        held, pid = _probe(self.pid_path)
        return pid if held else None

    def alive(self) -> bool:
        """Whether a live trainer holds the folder (see `holder`)."""
        if self._key() in _CLAIMS or fcntl is None:
            return self.holder() is not None
        return _probe(self.pid_path)[0]

    def release(self) -> None:
        """Give up the claim: remove the `pid` file when it is still this process's, and drop its lock."""
        key = self._key()
        fd = _CLAIMS.pop(key, None) if key else None
        if fd is None:
            if fcntl is None and read_pid(self.pid_path) == os.getpid():
                self.pid_path.unlink(missing_ok=True)
            return
        try:
            if os.stat(self.pid_path).st_ino == os.fstat(fd).st_ino:  # removed before the lock is dropped
                self.pid_path.unlink()
        except OSError:
            pass  # gone already: nothing to remove
        finally:
            os.close(fd)

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
        _atomic_text(self.progress_path, "".join(json.dumps(r) + "\n" for r in kept))

    def preview_path(self, step: int) -> Path:
        return self.previews / f"step-{step:06d}.png"

    def save_preview(self, step: int, image) -> Path:
        path = self.preview_path(step)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
