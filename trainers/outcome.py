"""What a training run's two doors say when it ends: `tokensmith train` (studio/cli_train.py) and
`python -m trainers` (trainers/__main__.py, the door `accelerate launch` and torchrun use).

Both print an Outcome: the same lines and the same exit status for the same end (learned, stopped, stopped
before it began, stored but not uploaded); notes (not the result lines) after the program's name. Where the
lines go is the door's: `tokensmith train` writes the result on stdout (parseable; --json prints `result`
instead), while `python -m trainers`, whose output is a launch's log, writes everything on stderr as its
progress lines.

Imports stay light (the CLI's home check reads EMPTY_HOME); the run's modules load when a run has ended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR = 0, 1
# Both doors refuse an empty --home: `--home "$PROJECT_HOME"` with the variable unset must not train into
# the user's own store.
EMPTY_HOME = '--home is empty: give a folder (is the variable in --home "$VAR" unset?)'


@dataclass(frozen=True)
class Outcome:
    """How a run ended, for the user: `said` (the result) and `notes` (each printed on stderr after the
    program's name: "tokensmith train: warning: ..."), `exit_code`, and `result`, train --json's object
    ({} when there is no result: the run stopped)."""

    exit_code: int
    said: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    result: dict[str, Any] = field(default_factory=dict)


def stopped_early(exc: BaseException) -> Outcome:
    """A run stopped (Ctrl-C, SIGTERM) while it prepared: the trainer's RunStopped says what --resume does."""
    return Outcome(EXIT_ERROR, notes=(str(exc),))


def finish(emb, *, home: str | Path | None, push_to_hub: str = "", failed_upload=None) -> Outcome:
    """The end of a run that returned its embedding `emb`: stopped (and the command that continues it, with
    `home`, the run's home), or learned, with the step it kept, its warning, and, when it was to be pushed
    (`push_to_hub`), the URL or the upload's error (`failed_upload`, an UploadError: exit 1)."""
    from trainers.commands import resume_command
    from trainers.storing import summary

    info = summary(emb)
    if info.get("end") == "stopped":  # SIGTERM: every process stopped at the same step
        resume = resume_command(Path(info["config"]["run_dir"]), home)
        step = emb.meta.get("steps")
        return Outcome(EXIT_ERROR, notes=(f"stopped at step {step}; continue with: {resume}",))
    result = learned(emb, info) | {"path": str(_stored_path(emb.name, home)), "sha256": emb.sha256}
    if push_to_hub:
        result |= upload_outcome(result["run_dir"], failed_upload)
    return Outcome(
        EXIT_ERROR if failed_upload is not None else EXIT_OK,
        said=tuple(learned_lines(result)),
        notes=tuple(
            note
            for note in (
                result["warning"] and f"warning: {result['warning']}",
                failed_upload is not None and f"error: {failed_upload}",
            )
            if note
        ),
        result=result,
    )


def _stored_path(name: str, home: str | Path | None) -> Path:
    """Where the store under `home` (default: $TOKENSMITH_HOME or ~/.tokensmith) keeps `name`."""
    from embeddings import Store
    from trainers.commands import home_from_environment

    return Store.for_home(Path(home).expanduser() if home else home_from_environment()).path(name).resolve()


def learned(emb, info: dict) -> dict[str, Any]:
    """train --json's object for a stored run (`info`: its trainer summary)."""
    steps = int(emb.meta.get("steps", 0))
    return {
        "name": emb.name,
        "family": emb.family,
        "steps": steps,
        "trained_steps": int(info.get("trained_steps", steps)),
        "kept": info.get("kept", "last"),
        "end": info.get("end"),
        "num_vectors": emb.num_vectors,
        "metrics": json.loads(emb.meta.get("metrics", "{}")),
        "run_dir": info["config"]["run_dir"],
        "warning": info.get("warning", ""),
    }


def learned_lines(result: dict) -> list[str]:
    """'learned <cat> (finished; kept step 75 of 150, ...); use it in a prompt as <cat>', and the URL of an
    upload."""
    from trainers.ending import kept_note

    note = kept_note(result["steps"], result["trained_steps"])
    how = "; ".join(filter(None, [(result["end"] or "").replace("_", " "), note]))
    lines = [f"learned <{result['name']}> ({how}); use it in a prompt as <{result['name']}>"]
    if result.get("url"):
        lines.append(f"uploaded to {result['url']}")
    return lines


def upload_outcome(run_dir: str, failed_upload) -> dict:
    """The --push-to-hub keys of train's result: {"uploaded": true, "url": ...} (the URL from the run's
    `done` event), or {"uploaded": false, "upload_error": ...}."""
    from trainers.runfolder import RunFolder

    if failed_upload is not None:
        return {"uploaded": False, "upload_error": str(failed_upload)}
    done = (RunFolder(Path(run_dir)).read_progress() or [{}])[-1]
    return {"uploaded": True, "url": done.get("url", "")}
