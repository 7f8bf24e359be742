"""The job runner: training runs as a `tokensmith train` subprocess writing a run folder; the UI reads it.

A job is its run folder `$home/runs/<id>/`: `job.json` (what the studio asked for: the request, the command)
plus the trainer's own record (`config.toml`, `command.txt`, `progress.jsonl`, `previews/`, `snapshots/`,
`checkpoints/`, `pid`) and `log.txt` (the trainer's stdout and stderr). Because the folder is the record, a
browser reload, a second tab or a restarted UI finds every job again; runs started from the CLI with
`--run-dir` under `$home/runs/` are listed too. Cancelling sends SIGTERM; the trainer stops cleanly and writes
a `stopped` event. Resuming starts the same command again with `--resume` in the same folder; a launch the
trainer refuses leaves the run as it was, so the next one starts from the command before it (job.json's
`earlier`). Reading a run folder for display is studio/runview.py; job.json and /proc are read in
studio/jobfiles.py.

Whether a job runs is never taken from a pid alone (a killed trainer's pid is soon another process's): it is
this runner's own child, or the trainer's lock on the run folder (RunFolder.claim), or, until the trainer
takes that lock, the process job.json names if it started when the job was launched. A start, resume or
train-further holds a lock (flock) on `runs/` from its check that no job runs until its job.json is written,
so two studios on one home cannot both start a job.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from studio.jobfiles import created_at, job_record, newer_than, one_at_a_time, started_at, write_atomic
from studio.runview import STEPS_FIXED, RunState, read_run, steps_fixed, stored_now, taken_text
from studio.trainrequest import TrainRequest
from trainers.runfolder import RunFolder

# The trainer as the CLI runs it; tests pass a fake command instead.
TRAINER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "studio", "train")
# How far a process's start time (read from /proc, to about a second) may be from the job's `launched` for it
# to be taken as the process this studio launched.
LAUNCH_SLACK_S = 2.0
# What `accelerate launch` hands the processes it starts (its mixed precision, gradient accumulation,
# DeepSpeed and FSDP settings). The studio launches plain `tokensmith train`: such variables in its own
# environment describe no launch of its jobs, and the trainer would only note them as settings it does not use
# (the page has no field for them). ACCELERATE_USE_CPU alone is kept: a device choice made by hand (the
# trainer's own CPU recipe sets it), honoured as `tokensmith train` in the same shell honours it.
LAUNCHER_PREFIX, LAUNCHER_KEPT = "ACCELERATE_", ("ACCELERATE_USE_CPU",)
GRADIENT_CHECKPOINTING = "--gradient-checkpointing"


# --- jobs ---


@dataclass(frozen=True)
class Job:
    """One run folder and what the studio knows of how it was started."""

    id: str
    run_dir: Path
    name: str
    command: tuple[str, ...] = ()
    created: float = 0.0
    pid: int | None = None
    launched: float = 0.0  # when the current process started (a resume relaunches in the same folder)
    cancelled: bool = False  # a cancel was sent to the launch above (not to a trainer that claimed it since)
    problem: str = ""  # why the folder's job.json cannot be read: the job lists as unreadable (not saved)
    # the command of the run before this launch (a resume, or training further): where the next launch starts
    # from when the trainer refuses this one
    earlier: tuple[str, ...] = ()

    def to_json(self) -> str:
        data = asdict(self) | {
            "run_dir": str(self.run_dir),
            "command": list(self.command),
            "earlier": list(self.earlier),
        }
        del data["problem"]
        return json.dumps(data, indent=2)


def _end_group(proc: subprocess.Popen) -> None:
    """Kill a just-launched trainer and its children (its own session) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (AttributeError, OSError):  # no process groups (Windows), or gone already
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")  # what a new job's id replaces in the name it starts from
# a job id that get() accepts: the studio's own, and a CLI run's folder name (`runs/cat.v2` for --name
# cat.v2: embedding names may hold dots); never one that leaves runs/ ('..', a leading dot, a slash)
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RUN_FILES = ("job.json", "progress.jsonl", "config.toml")  # a folder under runs/ with one of these is a run


def new_job_id(name: str, now: float | None = None) -> str:
    """A sortable, unique, URL-safe id: 'cat-20261126-202301-3fa2'."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    slug = _ID_UNSAFE.sub("-", name).strip("-")[:40] or "run"
    return f"{slug}-{stamp}-{secrets.token_hex(2)}"


class JobRunner:
    """Starts, lists, reads, cancels and resumes training jobs under `$home/runs/` (one process per job)."""

    def __init__(self, home: Path, *, trainer_command: tuple[str, ...] | None = None):
        self.home = Path(home).expanduser().resolve()  # the trainer runs in its run folder: no relative paths
        self.runs_dir = self.home / "runs"
        self.trainer_command = tuple(trainer_command or TRAINER_COMMAND)
        self._procs: dict[str, subprocess.Popen] = {}  # children of this process, reaped by poll()

    # --- starting ---

    def start(self, request: TrainRequest, *, job_id: str | None = None) -> Job:
        """Start `tokensmith train` for `request` in a fresh run folder and return at once."""
        with self._starting():
            return self._start(request, job_id=job_id)

    def _start(self, request: TrainRequest, *, job_id: str | None) -> Job:
        job_id = job_id or new_job_id(request.name)
        run_dir = self.runs_dir / job_id  # may exist already, holding the uploaded images
        if any((run_dir / f).exists() for f in ("job.json", "progress.jsonl")):
            raise FileExistsError(f"run folder {run_dir} already holds a job: resume it or start a new one")
        made = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        command = (
            *self.trainer_command,
            *request.to_args(),
            "--run-dir",
            str(run_dir),
            "--home",
            str(self.home),
        )
        try:
            return self._launch(Job(id=job_id, run_dir=run_dir, name=request.name, command=command))
        except BaseException:
            if made:  # a start that failed (a full disk) leaves no folder that no page lists
                shutil.rmtree(run_dir, ignore_errors=True)
            raise

    def resume(self, job_id: str, *, gradient_checkpointing: bool = False) -> Job:
        """Continue a stopped, failed or crashed job from its last checkpoint, in the same run folder;
        `gradient_checkpointing` adds it (less memory, the same numbers: a resume accepts it)."""
        job = self.get(job_id)
        state = self.state(job)
        if state.active:
            raise RuntimeError(f"job '{job_id}' is still running: there is nothing to resume")
        if state.status == "done":
            raise RuntimeError(f"job '{job_id}' finished: train it further instead")
        if state.status == "unreadable":
            raise RuntimeError(
                f"job '{job_id}' cannot be resumed: {state.message}; repair or remove its folder"
            )
        if not state.can_resume:
            raise RuntimeError(
                f"job '{job_id}' ended before its first checkpoint: there is nothing to resume from; "
                "start it again"
            )
        earlier = self._command_of(job, state)
        command = earlier if "--resume" in earlier else (*earlier, "--resume")
        if gradient_checkpointing and GRADIENT_CHECKPOINTING not in command:
            command = (*command, GRADIENT_CHECKPOINTING)
        with self._starting():
            return self._launch(replace(job, command=command, earlier=earlier))

    def train_further(self, job_id: str, more_steps: int, *, replace_other: bool = False) -> Job:
        """Continue a finished job for `more_steps` steps from its last checkpoint, early stopping off; at
        the end, the stored embedding is replaced by what one longer run would have stored.

        Only the job's own result is replaced: a name that now holds another embedding (or a file that
        cannot be read) is refused unless `replace_other`, and a name that holds nothing is stored again."""
        job = self.get(job_id)
        state = self.state(job)
        if state.status != "done":
            raise RuntimeError(f"job '{job_id}' has not finished: only a finished job can be trained further")
        if more_steps < 1:
            raise ValueError(f"more steps must be at least 1, got {more_steps}")
        if steps_fixed(job.run_dir):
            raise ValueError(f"job '{job_id}' cannot be trained further: {STEPS_FIXED}")
        name = state.embedding_name or job.name
        held = self.stored_now(job, state)
        if held in ("other", "unreadable") and not replace_other:
            raise FileExistsError(taken_text(name, held))
        again = ("--resume", *(() if held == "gone" else ("--overwrite",)), "--no-early-stopping")
        earlier = self._command_of(job, state)
        command = [w for w in earlier if w not in ("--resume", "--overwrite", "--no-early-stopping")]
        command = [w for w in command if w != "--early-stopping"]
        if "--steps" in command:  # one --steps, so the command reads as what runs
            del command[command.index("--steps") : command.index("--steps") + 2]
        command += ["--steps", str(state.step + more_steps), *again]
        with self._starting():
            return self._launch(replace(job, command=tuple(command), earlier=earlier))

    def stored_now(self, job: Job, state: RunState) -> str:
        """What the store holds under a finished job's name: "held" (its result), "gone", "other" or
        "unreadable" (studio.runview.stored_now)."""
        from embeddings import Store

        return stored_now(Store.for_home(self.home), job.run_dir, state.embedding_name or job.name)

    def refuse_while_running(self) -> None:
        """Raise RuntimeError while a job runs (callers check before writing anything for a new one)."""
        running = [job for job in self.jobs() if self.state(job).active]
        if running:
            raise RuntimeError(
                f"training job '{running[0].id}' is still running: wait for it or cancel it first "
                "(one job at a time keeps this machine responsive)"
            )

    @contextlib.contextmanager
    def _starting(self) -> Iterator[None]:
        """Hold a lock on runs/ from the check that no job runs until the launch within has written job.json
        (from then on every studio sees the new job run): of two starts at once, the second is refused."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        with one_at_a_time(self.runs_dir):
            self.refuse_while_running()
            yield

    def _command_of(self, job: Job, state: RunState) -> tuple[str, ...]:
        """The command of the run the folder holds: the job's last launch, or the one before it when the
        trainer refused that launch (the run is as it was: repeating the refused command is refused again).
        Its --run-dir and --home are this job's folder and this studio's home: a home copied or moved
        since must not continue the run, and store the result, where it was first made."""
        if state.refused and job.earlier:
            return self._here(job, job.earlier)
        if job.command:
            return self._here(job, job.command)
        recorded = job.run_dir / "command.txt"  # a run started from the CLI
        if recorded.exists():
            import shlex

            words = shlex.split(recorded.read_text(encoding="utf-8").strip().splitlines()[0])
            if words and words[0] == "tokensmith":
                words = [*self.trainer_command[:-1], *words[1:]]
            return self._here(job, tuple(words))
        raise RuntimeError(f"job '{job.id}' has no recorded command: start it again from the Train page")

    def _here(self, job: Job, command: tuple[str, ...]) -> tuple[str, ...]:
        """`command` with the values of its --run-dir and --home flags set to where the job is now."""
        words, now = list(command), {"--run-dir": str(job.run_dir), "--home": str(self.home)}
        for i, word in enumerate(words[:-1]):
            if word in now:
                words[i + 1] = now[word]
        for i, word in enumerate(words):
            flag = word.partition("=")[0]
            if "=" in word and flag in now:  # --home=DIR
                words[i] = f"{flag}={now[flag]}"
        return tuple(words)

    def _launch(self, job: Job) -> Job:
        env = {k: v for k, v in os.environ.items() if k in LAUNCHER_KEPT or not k.startswith(LAUNCHER_PREFIX)}
        env |= {"TOKENSMITH_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        launched = time.time()
        with open(job.run_dir / "log.txt", "ab") as log:
            proc = subprocess.Popen(
                list(job.command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=job.run_dir,
                env=env,
                start_new_session=True,  # its own process group: a cancel reaches accelerate's children too
            )
        job = Job(
            id=job.id,
            run_dir=job.run_dir,
            name=job.name,
            command=job.command,
            created=job.created or launched,
            pid=proc.pid,
            launched=launched,
            earlier=job.earlier,
        )
        try:
            write_atomic(job.run_dir / "job.json", job.to_json())
        except BaseException:  # a job the studio cannot record (a full disk) must not train unheard
            _end_group(proc)
            raise
        self._procs[job.id] = proc
        return job

    # --- finding and reading ---

    def get(self, job_id: str) -> Job:
        """The job with this id (from its run folder); KeyError if there is none."""
        if not _JOB_ID.fullmatch(job_id or "") or ".." in job_id:
            raise KeyError(f"'{job_id}' is not a job id")
        run_dir = self.runs_dir / job_id
        if not run_dir.is_dir():
            raise KeyError(f"no job '{job_id}' under {self.runs_dir}: it may have been deleted")
        return self._load(run_dir)

    def jobs(self) -> list[Job]:
        """Every run folder under `$home/runs/`, newest first."""
        if not self.runs_dir.is_dir():
            return []
        found = []
        for run_dir in self.runs_dir.iterdir():
            try:
                if run_dir.is_dir() and any((run_dir / f).exists() for f in RUN_FILES):
                    found.append(self._load(run_dir))
            except OSError as exc:  # one damaged folder is listed as such; the others still are
                problem = f"cannot read {run_dir}: {exc}"
                found.append(Job(id=run_dir.name, run_dir=run_dir, name=run_dir.name, problem=problem))
        return sorted(found, key=lambda job: (job.created, job.id), reverse=True)

    def _load(self, run_dir: Path) -> Job:
        """The job of `run_dir`; when its job.json cannot be read, a job that says why (it lists as
        unreadable)."""
        path = run_dir / "job.json"
        try:
            data = job_record(path)  # {}: a run the CLI started, the folder alone tells its story
        except (OSError, ValueError) as exc:
            return Job(
                id=run_dir.name,
                run_dir=run_dir,
                name=run_dir.name,
                created=created_at(run_dir),
                problem=f"cannot read {path}: {exc}",
            )
        # a cancel rewrote job.json: a trainer that claimed the folder after it (a resume from the CLI) was
        # not cancelled
        cancelled = bool(data.get("cancelled")) and not newer_than(run_dir, path.stat().st_mtime)
        return Job(
            id=run_dir.name,
            run_dir=run_dir,
            name=data.get("name") or run_dir.name,
            command=tuple(data.get("command") or ()),
            created=float(data.get("created") or created_at(run_dir)),
            pid=data.get("pid"),
            launched=float(data.get("launched") or 0.0),
            cancelled=cancelled,
            earlier=tuple(data.get("earlier") or ()),
        )

    def _launch_alive(self, job: Job) -> bool:
        """Whether the process this studio launched for the job still runs: a child of this runner (its pid
        cannot be reused before it is reaped), or job.json's pid if that process started at the launch."""
        proc = self._procs.get(job.id)
        if proc is not None and proc.pid == job.pid:
            return proc.poll() is None
        if not job.pid or not job.launched:
            return False
        started = started_at(job.pid)
        return started is not None and abs(started - job.launched) <= LAUNCH_SLACK_S

    def alive(self, job: Job) -> bool:
        """Whether the job's trainer runs: the launch this studio made, or any trainer (a resume from the CLI
        included) that holds the run folder's lock. A pid file or job.json pid alone proves nothing."""
        return self._launch_alive(job) or RunFolder(job.run_dir).alive()

    def state(self, job: Job | str, *, tail: bool = False) -> RunState:
        """Read the job's run folder now; a folder that cannot be read is `unreadable`, with why. `tail`:
        read only the end of a long progress log when it holds all a listing shows (`tokensmith runs`;
        runview.read_run)."""
        job = self.get(job) if isinstance(job, str) else job
        if job.problem:
            return RunState(status="unreadable", message=job.problem)
        try:
            alive, launched, cancelled = self.alive(job), job.launched, job.cancelled
            return read_run(job.run_dir, alive=alive, launched=launched, cancelled=cancelled, tail=tail)
        except OSError as exc:
            return RunState(status="unreadable", message=f"cannot read {job.run_dir}: {exc}")

    # --- stopping ---

    def cancel(self, job_id: str) -> bool:
        """Ask the trainer to stop (SIGTERM); it writes a `stopped` event. False if it was not running.

        Only a process shown to be this run's is signalled: the studio's own launch gets the SIGTERM in its
        whole process group (its own session: accelerate's children too), a trainer that holds the run
        folder's lock (started from the CLI, say) gets it alone, which stops every process of its launch."""
        job = self.get(job_id)
        if job.problem:
            return False
        if self._launch_alive(job):
            pid, group = job.pid, True
        else:
            pid, group = RunFolder(job.run_dir).holder(), False
        if not pid:
            return False
        if (job.run_dir / "job.json").exists():
            write_atomic(job.run_dir / "job.json", replace(job, cancelled=True).to_json())
        try:
            if group and os.getpgid(pid) == pid:  # the session it was started in: nothing else is in it
                os.killpg(pid, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        except PermissionError:
            os.kill(pid, signal.SIGTERM)
        return True

    def wait(self, job_id: str, timeout: float) -> RunState:
        """Block until the job's process exits or `timeout` seconds pass (for tests and scripts)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if not self.alive(job) or time.monotonic() > deadline:
                return self.state(job)
            time.sleep(0.1)
