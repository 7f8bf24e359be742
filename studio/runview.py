"""What a run folder says, read for the studio: the latest progress row, the final event, previews,
snapshots and the log tail. The folder is the record, so reading it is all the UI needs to show a run; and
whether a finished run may train further (steps_fixed) and the store still holds what it stored (stored_now).
progress.jsonl itself is read by studio/progressfile.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from embeddings.errors import EmbeddingFormatError, StoreError
from studio.progressfile import (
    latest_number,
    number_in,
    read_progress_checked,
    read_progress_tail,
    row_at,
    whole_number,
)
from trainers.commands import RESUME_NOTE
from trainers.runfolder import RunFolder

LOG_TAIL_LINES = 40
# a run's out-of-memory failure as the trainer worded it before its event had `reason: out_of_memory`
OLD_OUT_OF_MEMORY = re.compile(
    r"^training ran out of memory \((?P<what>.*?)\); (?=resume with|a new run|try|use a)"
)
# the last line of a trainer that refused to run: `tokensmith train: error: ...` (`python -m trainers` alike)
ERROR_LINE = re.compile(r"^(?:tokensmith [\w-]+|python -m trainers): error: (?P<why>.+)$")


@dataclass(frozen=True)
class RanOutOfMemory:
    """A run that failed for want of memory (its `failed` event's `reason: out_of_memory`): what ran out, and
    whether it trained with gradient checkpointing, so a page can offer what would need less."""

    ran_out: str
    gradient_checkpointing: bool


@dataclass(frozen=True)
class RunState:
    """A snapshot of a run folder: the latest progress row (with the newest validation loss and metric), the
    final event if any, and the files so far."""

    status: str  # "starting" | "running" | "done" | "failed" | "stopped" | "ended" | "unreadable"
    # ("failed": the trainer said why, in a final event or a refusal; "ended": it exited without a word)
    step: int = 0
    total: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    metric: float | None = None  # the newest preview score; a finished run's: the stored step's
    lr: float | None = None
    elapsed: float | None = None
    eta: float | None = None
    message: str = ""
    embedding_name: str | None = None
    kept_step: int | None = None  # done: the step whose snapshot was stored (keep = best: maybe earlier)
    checkpoint_step: int | None = None  # the newest complete checkpoint: where a resume continues from
    history: list[dict] = field(default_factory=list)
    previews: list[Path] = field(default_factory=list)
    snapshots: list[Path] = field(default_factory=list)
    log_tail: str = ""
    warning: str = ""  # done: why the stored step's previews doubt that the concept was learned
    notes: list[str] = field(default_factory=list)  # the trainer's `note:` lines (the data it found)
    # done or stopped: why the trainer refused the launch after that event (a resume, or training further),
    # which left the run as it was
    refused: str = ""
    out_of_memory: RanOutOfMemory | None = None  # failed: for want of memory

    @property
    def active(self) -> bool:
        """True while the trainer may still write (the UI keeps polling)."""
        return self.status in ("starting", "running")

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] (0 when the total is not known yet)."""
        if not self.total:
            return 1.0 if self.status == "done" else 0.0
        return min(1.0, max(0.0, self.step / self.total))

    @property
    def resumable(self) -> bool:
        """A run that ended before finishing (the CLI's `--resume` starts it over without a checkpoint)."""
        return self.status in ("stopped", "failed", "ended")

    @property
    def can_resume(self) -> bool:
        """Ended before finishing and has a checkpoint to continue from (else it can only start again)."""
        return self.resumable and self.checkpoint_step is not None


def _numbered_files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


# The trainer's notes that are CLI advice on reusing printed commands, not facts about the run: left out.
CLI_ONLY_NOTES = (RESUME_NOTE,)
NOTES_BYTES = 64 * 1024  # how much of log.txt the notes are looked for in


def _notes(path: Path) -> list[str]:
    """The `note: ...` lines the trainer printed before training (the data it found, captions it added)."""
    try:  # they come before the first step: the head of the log, not the whole of it at every poll
        with open(path, "rb") as log:
            lines = log.read(NOTES_BYTES).decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    said = [line.removeprefix("note: ").strip() for line in lines if line.startswith("note: ")]
    return [note for note in dict.fromkeys(said) if not note.startswith(CLI_ONLY_NOTES)]


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _refusal(log_tail: str) -> str | None:
    """The error a trainer printed before it exited without a final event (it refused the run before writing
    anything: a bad init, no checkpoint to resume), or None."""
    found = [match["why"] for line in log_tail.splitlines() if (match := ERROR_LINE.match(line.strip()))]
    return found[-1] if found else None


def read_run(
    run_dir: Path, *, alive: bool, launched: float = 0.0, cancelled: bool = False, tail: bool = False
) -> RunState:
    """What a run folder says, given whether its trainer is alive, when it was (re)launched (epoch seconds)
    and whether a cancel was sent. `tail`: read only the end of a long progress log when it holds all that a
    summary shows (`tokensmith runs`); `history` then holds only the rows read."""
    folder = RunFolder(run_dir)
    progress = folder.progress_path
    try:
        from_tail = read_progress_tail(progress) if tail and progress.is_file() else None
        rows, final, damaged = (*from_tail, None) if from_tail else read_progress_checked(progress)
        written = progress.stat().st_mtime if final is not None else 0.0
    except OSError as exc:  # not a file, or not ours to read: say so, and the other runs still show
        return RunState(status="unreadable", message=f"cannot read {progress}: {exc}")
    if damaged is not None:  # not written by a trainer: say so rather than guess at the run's step
        step = json.dumps(damaged["step"])[:40]
        return RunState(
            status="unreadable", message=f"cannot read {progress}: a row's step is {step}, not a step number"
        )
    earlier, refused = None, ""
    if final is not None and (alive or written < launched):
        # the last line of the run before this launch (a resume, or training further, from the studio or the
        # CLI while its trainer lives): the trainer has not rewritten the log yet, or exited before it could
        earlier, final = final, None
    why = None if final is not None or alive or cancelled else _refusal(_tail(run_dir / "log.txt"))
    if why and earlier is not None and earlier["event"] in ("done", "stopped"):
        # a refused resume or train-further leaves the run as it was (the trainer records no event for it):
        # it is still done or stopped, and the refusal is a note
        final, refused = earlier, why
    last = rows[-1] if rows else {}
    message = str(final.get("message", "")) if final else ""
    if final is not None:
        status = final["event"]
    elif alive:
        status = "running" if rows else "starting"
    elif cancelled:  # SIGTERM arrived before the trainer could report (e.g. while it imported torch)
        status, message = "stopped", "cancelled before the trainer reported"
    elif why:
        # it refused the run before writing (a bad init, a refused resume): failed, as a refusal after it
        # wrote its first lines (a prompt too long for the model) is, with the trainer's reason alone
        status, message = "failed", why
    else:
        status, message = "ended", "the trainer exited without a final report; its log is below"
    kept = whole_number(final.get("kept")) if final else None
    metric = latest_number(rows, "metric")
    stored = number_in(row_at(rows, kept) or {}, "metric") if kept is not None else None
    if stored is not None:  # keep = best may have stored an earlier step: show what was stored
        metric = stored
    return RunState(
        status=status,
        step=whole_number(last.get("step", 0)),
        total=whole_number(last.get("total")),
        loss=number_in(last, "loss"),
        val_loss=latest_number(rows, "val_loss"),
        metric=metric,
        lr=number_in(last, "lr"),
        elapsed=number_in(last, "elapsed"),
        eta=number_in(last, "eta"),
        message=message,
        embedding_name=str(final["name"]) if final and final.get("name") else None,
        kept_step=kept,
        checkpoint_step=folder.checkpoint_step(),
        history=rows,
        previews=_numbered_files(folder.previews, "step-*.png"),
        snapshots=_numbered_files(folder.snapshots, "step-*.safetensors"),
        log_tail=_tail(run_dir / "log.txt") if status in ("failed", "ended") else "",
        warning=str(final.get("warning") or "") if final else "",
        notes=_notes(run_dir / "log.txt"),
        refused=refused,
        out_of_memory=_out_of_memory(final) if status == "failed" else None,
    )


def _out_of_memory(final: dict | None) -> RanOutOfMemory | None:
    """The failed event's record of running out of memory, if that is why it failed. A run from before the
    event had its `reason` field is read from its message (the trainer's words then: what ran out, in
    brackets, and `--gradient-checkpointing` among the advice unless the run had it)."""
    if not final:
        return None
    if final.get("reason") == "out_of_memory":
        return RanOutOfMemory(str(final.get("ran_out", "")), final.get("gradient_checkpointing") is True)
    if "reason" not in final and (old := OLD_OUT_OF_MEMORY.match(str(final.get("message", "")))):
        return RanOutOfMemory(old["what"], "--gradient-checkpointing" not in final["message"][old.end() :])
    return None


# --- what a finished run allows: training further, and what it would replace ---

STEPS_FIXED = (
    "its learning rate follows a cosine schedule, whose rates depend on Steps: more steps would change the "
    "rate of every step it took, so it cannot be trained further; start a new run with more Steps instead"
)


def steps_fixed(run_dir: Path) -> bool:
    """Whether the run's config may not change its steps on a resume, so that it cannot be trained further:
    the trainer's own rule (trainers.resume.config_changes: a cosine schedule's rates depend on its total)
    applied to its config.toml with one more step. False without a config the trainer wrote."""
    from embeddings.errors import TokensmithError
    from trainers.configfile import load as load_config
    from trainers.resume import computed_values, config_changes

    try:
        cfg = load_config(RunFolder(run_dir).config_path)
    except (OSError, TokensmithError):
        return False
    saved = computed_values(cfg)
    return bool(
        set(config_changes(saved, cfg.replace(steps=cfg.steps + 1))) - set(config_changes(saved, cfg))
    )


def taken_text(name: str, held: str) -> str:
    """Why training a finished job further would replace something that is not its result (`held`: "other"
    or "unreadable", as stored_now says), and how to go ahead."""
    if held == "unreadable":
        what = f"<{name}> in the Library is now a file that cannot be read (the Library's warning says why)"
    else:
        what = (
            f"<{name}> in the Library is no longer this job's result: another embedding was stored under "
            "that name after it was deleted or renamed"
        )
    return (
        f"{what}; training further would replace it. Turn on “Replace a stored embedding of the same name” "
        "to replace it, or rename that one in the Library first"
    )


def stored_now(store, run_dir: Path, name: str) -> str:
    """What the store holds under a finished run's name now: "held" (what the run stored), "gone" (nothing:
    deleted or renamed), "other" (another embedding, stored under the name since) or "unreadable".

    What the run stored is its `snapshots/final.safetensors`: the stored file holds it when their headers'
    sha256 (of the tensor data) agree. A run without that file (an older one) is matched by the run folder
    its stored file's trainer metadata names. Headers only: no tensor is read."""
    from embeddings.canonical import read_header  # torch with it: not for reading run folders alone

    try:
        if not store.exists(name):
            return "gone"
        stored = store.entry(name).meta  # a file the Library skips (its warning says why) is unreadable here
    except (EmbeddingFormatError, StoreError, OSError):
        return "unreadable"
    try:
        final = read_header(RunFolder(run_dir).final_path).get("__metadata__") or {}
    except (EmbeddingFormatError, OSError):
        final = {}
    if final.get("sha256"):
        return "held" if stored.get("sha256") == final["sha256"] else "other"
    made_in = _trainer_config(stored).get("run_dir")
    same = isinstance(made_in, str) and made_in and Path(made_in).resolve() == run_dir.resolve()
    return "held" if same else "other"


def _trainer_config(meta: dict) -> dict:
    """The training config in a stored file's `trainer` metadata ({} when it has none or another tool's)."""
    try:
        config = json.loads(meta.get("trainer") or "{}").get("config")
    except (ValueError, AttributeError):
        return {}
    return config if isinstance(config, dict) else {}
