"""The bookkeeping of one run: where it lives, what it logs, its snapshots and checkpoints, SIGTERM/Ctrl-C.
Whether a run may resume (its config, its images) is trainers/resume.py's.

`train()` (trainers/trainer.py) holds the order of work; this module holds the state that order touches, so
the loop reads as steps and not as file handling.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from embeddings import Embedding, package_version, save_canonical
from embeddings.errors import TokensmithError
from trainers import checkpoint as ckpt_io
from trainers import commands
from trainers.config import TrainConfig
from trainers.resume import computed_values
from trainers.runfolder import RunFolder
from trainers.samples import batches
from trainers.writes import writing

TRAINER_VERSION = "tokensmith-ti/1"


def resolve_run_dir(cfg: TrainConfig, home: Path) -> Path:
    """cfg.run_dir, else HOME/runs/NAME (NAME-2, NAME-3, ... when taken). Resuming: the newest run of NAME
    that did not finish (what a resume is for), else the newest (a finished run trained further)."""
    if cfg.run_dir:
        return Path(cfg.run_dir).expanduser()
    runs = Path(home) / "runs"
    numbered = _numbered(runs, cfg.name)
    taken = [runs / cfg.name, *numbered]
    existing = [p for p in taken if RunFolder(p).progress_path.exists()]
    if cfg.resume:  # a run killed while it prepared has its config but no progress yet: it starts over
        begun = [p for p in taken if RunFolder(p).begun]
        if not begun:
            raise TokensmithError(f"no run of '{cfg.name}' to resume under {runs}; pass --run-dir DIR")
        unfinished = [p for p in begun if not _finished(p)]
        return (unfinished or begun)[-1]
    return runs / cfg.name if not existing else _next_numbered(runs, cfg.name)


def _finished(folder: Path) -> bool:
    """Whether the run in `folder` ended with its `done` event."""
    records = RunFolder(folder).read_progress()
    return bool(records) and records[-1].get("event") == "done"


def _numbered(runs: Path, name: str) -> list[Path]:
    """The NAME-k folders under `runs`, by k."""
    found = (p for p in runs.glob(f"{name}-*") if p.name[len(name) + 1 :].isdigit())
    return sorted(found, key=lambda p: int(p.name[len(name) + 1 :]))


def _next_numbered(runs: Path, name: str) -> Path:
    """NAME-k after the highest number there, so a deleted NAME-2 beside NAME-3 does not hand out NAME-3."""
    numbered = _numbered(runs, name)
    last = int(numbered[-1].name[len(name) + 1 :]) if numbered else 1
    return runs / f"{name}-{last + 1}"


def claim_run_folder(cfg: TrainConfig, home: Path, folder: RunFolder) -> RunFolder:
    """`folder`, claimed for this process; a fresh run in the default place moves on to the next NAME-k while
    another live run holds it (the same --name started twice at once), any other run is refused."""
    while (holder := folder.claim()) is not None:
        if cfg.run_dir or cfg.resume:
            raise TokensmithError(
                f"run folder {folder.root} is in use by process {holder}; wait for that run to end or stop "
                "it (SIGTERM), or pass another --run-dir"
            )
        folder = RunFolder(_next_numbered(Path(home) / "runs", cfg.name))
    return folder


class StopRequested(BaseException):
    """A Ctrl-C while the run prepares (loading the model, caching latents, step 0): there is no step to end
    after, so the stop interrupts at once. A BaseException, like KeyboardInterrupt, so that no library's
    `except Exception` swallows it."""


class StopFlag:
    """Set by a signal: SIGTERM (the UI's Cancel) or a first Ctrl-C; the loop checks it between steps and
    ends cleanly (snapshot, checkpoint, a `stopped` event). A second Ctrl-C interrupts at once. Until the
    loop starts (`preparing`: loading SDXL takes minutes) a stop is at once: a Ctrl-C raises StopRequested, a
    SIGTERM ends the process as its default action does, once `on_stop` has recorded the stop. Raising would
    not end it at once: a hub download's worker threads finish their files first, and exit waits for them."""

    def __init__(self):
        self.raised, self.preparing, self.over, self._previous = False, True, False, {}
        self.on_stop = None  # writes the `stopped` event, once the run folder has its config

    @classmethod
    def install(cls, *signums: int) -> StopFlag:
        flag = cls()
        for signum in signums:
            # not the main thread (e.g. a UI thread): ValueError, and cancellation is by the caller then
            with contextlib.suppress(ValueError):
                flag._previous[signum] = signal.signal(signum, flag._handle)
        return flag

    def _handle(self, signum, frame) -> None:
        if self.preparing:
            self.raised = True
            if signum == signal.SIGTERM:
                self.record_stop()
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                os._exit(128 + signum)  # not reached: the default action ends the process
            raise StopRequested
        if signum == signal.SIGINT:
            if self.raised:
                raise KeyboardInterrupt
            self.raised = True
            if self.over:  # cleaning up after the run's last event: no step to stop after
                return
            print(
                "\nstopping after this step (it saves a checkpoint first); Ctrl-C again quits now",
                file=sys.stderr,
                flush=True,
            )
        self.raised = True

    def record_stop(self) -> None:
        """The `stopped` event of a stop while preparing: written once, once the folder has its config."""
        on_stop, self.on_stop = self.on_stop, None
        if on_stop is not None:
            with contextlib.suppress(Exception):  # the stop goes ahead even where the event cannot be written
                on_stop()

    def ended(self) -> None:
        """The run has its final event (failed): a signal during the cleanup that follows neither records a
        stop nor interrupts the cleanup (the model's weights being restored)."""
        self.preparing, self.over, self.on_stop = False, True, None

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)


@dataclass
class RunRecord:
    """Logging, timing, snapshots, checkpoints and provenance of one run as it trains (the studio reads a
    run folder back as studio.runview.RunState)."""

    cfg: TrainConfig
    folder: RunFolder
    accelerator: object
    on_progress: object = None
    home: Path | None = None  # the run's tokensmith home: commands in messages name it when not the default
    last_preview: object = None
    first_metric: dict = field(default_factory=dict)
    text_attention: str | None = None  # "sdpa" | "eager": picked at the start, kept in checkpoints
    last_metric: dict = field(default_factory=dict)
    last_val: float | None = None
    best: dict | None = None  # {"step", "rank", "scores"}: the best-scored snapshot so far (keep = best)
    _epochs: dict = field(default_factory=dict)
    _clock: tuple[float, int] = (0.0, 0)
    _elapsed_before: float = 0.0

    # --- resume ---
    def resume_from(self, params, stopper) -> int:
        """Load the newest checkpoint into the rows, optimizer and stopper; returns its step (0: none)."""
        latest = self.folder.latest_checkpoint()
        if latest is None:  # killed before its first checkpoint (or --save-every 0): the run starts over
            if self.accelerator.is_main_process:
                self.folder.truncate_progress_after(-1)
            return 0
        # the config and the number of processes were compared with the checkpoint's before the run's files
        # were written (trainers.resume.check_resume_loaded)
        saved = ckpt_io.load(latest, self.accelerator)  # restores the optimizer (and scaler, RNG) too
        with torch.no_grad():
            for param, rows in zip(params, saved.rows.values(), strict=True):
                param.copy_(rows.to(param.device, param.dtype))
        stopper.load(saved.stopper)
        self._elapsed_before = float(saved.stopper.get("elapsed", 0.0))
        self.first_metric = dict(saved.stopper.get("first_metric", {}))
        self.text_attention = saved.stopper.get("text_attention")
        self.best = saved.stopper.get("best")
        # what the stored file reports when the run ends at this very step (killed before it was stored)
        self.last_val = saved.stopper.get("last_val")
        self.last_metric = dict(saved.stopper.get("last_metric", {}))
        if self.accelerator.is_main_process:
            self.folder.truncate_progress_after(saved.step)
        return saved.step

    def checkpoint(self, step: int, params, stopper) -> None:
        """Every process calls this: Accelerate writes one RNG file per process; the main one the rest."""
        rows = {f"{i}": p.detach() for i, p in enumerate(params)}
        extra = {**stopper.state(), "elapsed": self.elapsed(), "first_metric": self.first_metric}
        extra["text_attention"] = self.text_attention
        extra["best"] = self.best
        extra["last_val"], extra["last_metric"] = self.last_val, self.last_metric
        extra["processes"] = self.accelerator.num_processes
        saved = ckpt_io.Checkpoint(step, rows, extra, computed_values(self.cfg))
        ckpt_io.save(self.folder.checkpoint_dir(step), saved, self.accelerator)
        if self.accelerator.is_main_process:
            self.folder.prune_checkpoints()

    # --- data order ---
    def batch_indices(self, samples, batch_size: int, micro: int) -> list[int]:
        """Sample indices of micro-batch `micro`: a pure function of (seed, micro), so resume replays it."""
        per_epoch = len(self._epoch(samples, batch_size, 0))
        epoch, position = divmod(micro, per_epoch)
        return self._epoch(samples, batch_size, epoch)[position]

    def _epoch(self, samples, batch_size: int, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            if len(self._epochs) > 8:
                self._epochs.clear()
            self._epochs[epoch] = batches(samples, batch_size, self.cfg.seed, epoch)
        return self._epochs[epoch]

    # --- time and logging ---
    def start_clock(self, step: int) -> None:
        self._clock = (time.monotonic(), step)

    def elapsed(self) -> float:
        started, _ = self._clock
        return self._elapsed_before + (time.monotonic() - started if started else 0.0)

    def log(self, step: int, *, loss=None, val_loss=None, lr=None, metric=None, **extra) -> dict:
        started, first_step = self._clock
        elapsed = self.elapsed()
        rate = (time.monotonic() - started) / (step - first_step) if started and step > first_step else None
        record = {
            "step": step,
            "total": self.cfg.steps,
            "loss": loss,
            "val_loss": val_loss,
            "metric": metric,
            "lr": lr,
            "elapsed": round(elapsed, 3),
            "eta": round(rate * (self.cfg.steps - step), 1) if rate else None,
            **extra,
        }
        if val_loss is not None:
            self.last_val = val_loss
        if metric is not None:
            # the preview scores are the numbers; step 0's record also names the text attention chosen,
            # which belongs in progress.jsonl, not in the stored file's metrics
            scores = {"metric": metric, **{k: v for k, v in extra.items() if _is_number(v)}}
            self.first_metric = self.first_metric or scores
            self.last_metric = scores
        if self.accelerator.is_main_process:
            self.folder.log(record)
            if self.cfg.trackers:  # the numbers that move (step is the axis; total and eta are bookkeeping)
                scalars = {
                    k: v
                    for k, v in record.items()
                    if isinstance(v, int | float) and k not in ("step", "total", "eta")
                }
                self.accelerator.log(scalars, step=step)
        if self.on_progress:
            self.on_progress(record)
        return record

    # --- results ---
    def consider(self, step: int, scores: dict, rank) -> None:
        """Remember the snapshot at `step` if its preview scores rank best so far (ties: the later one).
        Step 0 is the init, not a result; `rank` maps scores to a number, lower is better."""
        if step == 0 or not scores or rank is None:
            return
        value = float(rank(scores))
        if self.best is None or value <= self.best["rank"]:
            self.best = {"step": step, "rank": value, "scores": dict(scores)}

    def kept_scores(self, kept: int, trained: int) -> dict:
        """The preview scores of the stored step ({} when previews were off)."""
        return self.best["scores"] if kept != trained and self.best else self.last_metric

    def kept_step(self, last_step: int) -> int:
        """The step whose vectors are stored: the best-ranked snapshot (keep = best), else the last step."""
        if self.cfg.keep == "best" and self.best is not None:
            return int(self.best["step"])
        return last_step

    def embedding(
        self, vectors: dict, model, spec, *, steps: int, trained: int, stopper, reason: str, warning: str = ""
    ) -> Embedding:
        """The vectors of step `steps` (of `trained` run) with full provenance metadata; `warning` says why
        the stored step's previews doubt that the concept was learned."""
        best = stopper.best()
        kept_best = steps != trained
        meta = {
            "name": self.cfg.name,
            "family": spec.name,
            "base_model": model.source,
            "num_vectors": self.cfg.vectors,
            "init": self.cfg.init or spec.default_init,
            "steps": steps,
            "trainer": json.dumps(
                {
                    "version": TRAINER_VERSION,
                    "package": package_version(),  # the release that trained it (the card names it)
                    # the run's config, not this invocation's --resume / --overwrite (as its config.toml)
                    "config": self.cfg.replace(resume=False, overwrite=False).to_dict(),
                    "resolution": self.cfg.resolution or model.resolution,  # config 0: the model's own
                    "end": reason,
                    "trained_steps": trained,
                    "kept": "best" if kept_best else "last",
                    # P processes at grad_accum G train what one process trains at grad_accum G × P
                    "processes": self.accelerator.num_processes,
                    **({"warning": warning} if warning else {}),
                }
            ),
            "metrics": json.dumps(
                {
                    "val_loss": self.last_val,
                    "best_val_loss": best[1] if best else None,
                    "best_val_step": best[0] if best else None,
                    "before": self.first_metric,
                    "after": self.kept_scores(steps, trained),
                    "last": self.last_metric,
                }
            ),
        }
        return Embedding(self.cfg.name, vectors, {k: str(v) for k, v in meta.items()})

    def snapshot(self, step: int, conditioner, model, spec) -> None:
        if not self.accelerator.is_main_process:
            return
        vectors = {rows.key: rows.rows.detach().float().cpu().clone() for rows in conditioner.rows}
        meta = {"name": self.cfg.name, "family": spec.name, "base_model": model.source, "steps": str(step)}
        path = self.folder.snapshot_path(step)
        with writing(f"the snapshot of step {step}", path):
            save_canonical(Embedding(self.cfg.name, vectors, meta), path)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_trackers(cfg: TrainConfig) -> None:
    """Refuse trackers that are not installed (before any model loads)."""
    import importlib.util

    missing = [name for name in cfg.trackers if importlib.util.find_spec(name) is None]
    if missing:
        raise TokensmithError(
            f"tracker(s) {', '.join(missing)} not installed: pip install {' '.join(missing)}; or drop them"
        )


def start_trackers(cfg: TrainConfig, accelerator) -> None:
    """Accelerate's trackers (TensorBoard, W&B) besides the JSONL, when asked for."""
    if cfg.trackers:
        flat = {k: v for k, v in cfg.to_dict().items() if isinstance(v, int | float | str | bool)}
        accelerator.init_trackers("tokensmith", config=flat)


def run_commands(
    cfg: TrainConfig, folder: RunFolder, *, home: Path | None = None, processes: int = 1, cpu: bool = False
) -> tuple[list[str], list[str]]:
    """The run's equivalent commands and the notes on them (what `write_run_files` writes and the CLI
    prints): the run's own config, without --resume (what continues it is `--resume` added)."""
    cfg = cfg.replace(resume=False)
    lines = commands.equivalent_commands(cfg, folder.config_path, home=home, processes=processes, cpu=cpu)
    return lines, commands.command_notes(cfg, processes=processes)


def write_run_files(
    cfg: TrainConfig, folder: RunFolder, *, home: Path | None = None, processes: int = 1, cpu: bool = False
) -> tuple[list[str], list[str]]:
    """Write config.toml, command.txt and pid; return the equivalent commands and the notes on them (to
    print). `processes`: how many the run has (`cpu`: on a CPU); `home`: named when not the default."""
    lines, notes = run_commands(cfg, folder, home=home, processes=processes, cpu=cpu)
    toml = commands.to_toml(cfg.replace(resume=False), home=home)
    folder.write_config(toml, [*lines, *(f"# {note}" for note in notes)])
    folder.write_pid()
    return lines, notes
