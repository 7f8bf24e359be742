"""The Train page's job panel: pick a job, watch it (status, progress, loss chart, previews, the trainer's
notes in the form's words) and act on it (cancel, resume, train further)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import streamlit as st

from studio.app import context
from studio.jobs import GRADIENT_CHECKPOINTING, Job, JobRunner
from studio.progressfile import number_in, row_at
from studio.runview import STEPS_FIXED, RunState, steps_fixed, taken_text
from trainers.runfolder import RunFolder, progress_line

POLL_S = 2.0  # the fragment's refresh while a job runs (about 5 % of a core per watching tab)
CHART_POINTS = 500  # the loss chart draws the last N rows only, so long runs stay cheap to poll
STATUS_ICONS = {
    "starting": "⏳",
    "running": "🏃",
    "done": "✅",
    "stopped": "⏹️",
    "failed": "❌",
    "ended": "⚠️",
    "unreadable": "❓",
}
# The trainer's messages name its CLI flags ("use --vectors 7 or fewer"); the page names its fields instead.
TRAIN_FIELDS = {
    "--vectors": "Vectors",
    "--init": "Start from",
    "--steps": "Steps",
    "--learning-rate": "Learning rate",
    "--save-every": "Preview + snapshot every N steps",
    "--overwrite": "Replace a stored embedding of the same name",
    GRADIENT_CHECKPOINTING: "Gradient checkpointing",
}
REPLACE_LABEL = TRAIN_FIELDS["--overwrite"]
# The trainer's first note (trainers.datanotes): how many images, and from where
IMAGES_NOTE = re.compile(
    r"^training on (?P<count>\d+) image\(s\) from (?P<folder>.+?)(?P<rest>(?: \(|;|$).*)$"
)
SERIES = {"loss": "training loss", "val_loss": "validation loss"}  # the loss chart's series, in words
PREVIEW_W = 512  # the preview strip's width on the page (the demo world's 8 × 32 px, doubled)
NOTHING_TO_RESUME = (
    "No checkpoint was saved before it ended, so there is nothing to resume: start training again with the "
    "form on the left."
)


def job_choice_ui(runner: JobRunner) -> str | None:
    """Which job to show: ?job= from the URL (survives a reload), else the newest. Returns its id."""
    jobs = runner.jobs()
    if not jobs:
        st.info(
            "No training jobs yet. Start one on the left; it keeps running if you close or reload the page."
        )
        return None
    ids = [job.id for job in jobs]
    wanted = st.query_params.get("job")
    index = ids.index(wanted) if wanted in ids else 0
    labels = job_labels(jobs)
    chosen = st.selectbox("Job", ids, index=index, format_func=labels.get, key=f"job_pick_{ids[index]}")
    if st.query_params.get("job") != chosen:
        st.query_params["job"] = chosen
    return chosen


def job_labels(jobs: list[Job], now: float | None = None) -> dict[str, str]:
    """Each job's line in the picker: 'purple-two — started 13:42' (another day: 'started 27 Nov 13:42'); the
    id only where two lines would read the same (its name, a time and a random tail)."""
    labels = {job.id: f"{job.name} — started {started_text(job.created, now)}" for job in jobs}
    said = list(labels.values())
    return {job_id: f"{line} ({job_id})" if said.count(line) > 1 else line for job_id, line in labels.items()}


def started_text(created: float, now: float | None = None) -> str:
    """'13:42' today, '27 Nov 13:42' this year, '27 Nov 2025 13:42' before (the local time)."""
    when, today = time.localtime(created), time.localtime(now)
    if when[:3] == today[:3]:
        return time.strftime("%H:%M", when)
    return time.strftime("%d %b %H:%M" if when.tm_year == today.tm_year else "%d %b %Y %H:%M", when)


def progress_text(state: RunState, *, total: int | None = None) -> str:
    """The bar's text: 'step 40/150 · loss 0.1234 · val 0.1100 · ETA 12 s · preview distance 29.41 (lower is
    better)' (a finished run: its seconds, and the score of the step it kept). While the trainer prepares
    (no step yet) what it does then, as the CLI says it; `total`: the run's steps when no row says them."""
    if state.status == "starting":
        count = images_count(state.notes)
        images = f"{count} image(s)" if count is not None else "the images"
        total = state.total or total
        steps = f" (step 0 of {total})" if total else ""
        return f"preparing: loading the model and caching {images}{steps}"
    line = progress_line(
        state.step,
        state.total,
        loss=state.loss,
        val_loss=state.val_loss,
        eta=state.eta if state.active else None,
        elapsed=state.elapsed,
    )
    score = score_text(state)
    return f"{line} · {score}" if score else line


def score_text(state: RunState) -> str:
    """The previews' score (the trainer's `metric`) in words: the demo judge's colour distance (lower is
    better) or a CLIP similarity (higher is better); a finished run's is its kept step's, which keep = best
    may have taken before the last ('kept step 30: preview distance 11.92 (lower is better)')."""
    if state.metric is None:
        return ""
    kept = row_at(state.history, state.kept_step) if state.kept_step is not None else None
    from_kept = kept is not None and number_in(kept, "metric") == state.metric
    rows = [kept] if from_kept else [r for r in reversed(state.history) if number_in(r, "metric") is not None]
    clip = bool(rows) and "clip_text" in rows[0]  # the CLIP scorer logs its text similarity beside it
    said = (
        f"CLIP similarity {state.metric:.4g} (higher is better)"
        if clip
        else f"preview distance {state.metric:.4g} (lower is better)"
    )
    return f"kept step {state.kept_step}: {said}" if from_kept and state.kept_step != state.step else said


def images_count(notes: list[str]) -> int | None:
    """How many images the trainer found, from its first note; None before it noted them."""
    found = next((m for note in notes if (m := IMAGES_NOTE.match(note))), None)
    return int(found["count"]) if found else None


def config_steps(run_dir: Path) -> int | None:
    """The run's steps from its config.toml (written before the model loads), or None without one."""
    import tomllib

    try:
        steps = tomllib.loads(RunFolder(run_dir).config_path.read_text(encoding="utf-8")).get("steps")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def state_ui(runner: JobRunner, job_id: str, state: RunState) -> None:
    """Status, progress, loss curve, latest previews and the actions that fit the state."""
    st.markdown(f"**{STATUS_ICONS.get(state.status, '')} {state.status}** — `{job_id}`")
    run_dir = runner.runs_dir / job_id
    total = config_steps(run_dir) if state.status == "starting" and not state.total else None
    st.progress(state.fraction, text=progress_text(state, total=total))
    if state.status == "done":
        done_ui(runner, job_id, state)
    elif state.status in ("failed", "ended", "unreadable"):
        st.error(failed_text(state) or "training failed")
        if state.log_tail:  # the log as written: it is the record, CLI flags and all
            st.code(state.log_tail, language=None, wrap_lines=True)
    elif state.status == "stopped":
        st.warning(stopped_text(state))
    if state.refused:  # the run is as it was: done or stopped
        again = "Train further" if state.status == "done" else "Resume"
        st.warning(f"{again} was refused, and the run is as it was: {trainer_text(state.refused)}")
    if state.notes:  # closed while it runs too: opening it as the job ends would move what is below
        with st.expander("What the trainer noted about the data"):
            for note in state.notes:
                st.caption(note_text(note, run_dir))
    if state.resumable and not state.can_resume:
        st.info(NOTHING_TO_RESUME)
    if len(state.history) > 1:
        loss_chart_ui(state.history[-CHART_POINTS:])
    if state.previews:
        shown, caption = state.previews[-1], f"preview at step {_step_of(state.previews[-1])}"
        kept = [p for p in state.previews if _step_of(p) == state.kept_step]
        if kept:  # done: show what was stored, not merely the last step
            shown, caption = kept[0], f"preview at step {state.kept_step} (stored)"
        try:
            st.image(preview_image(shown), caption=caption, output_format="PNG")
        except OSError as exc:
            st.caption(f"preview {shown.name} could not be shown: {exc}")
    actions_ui(runner, job_id, state)


def done_ui(runner: JobRunner, job_id: str, state: RunState) -> None:
    """A finished job: what it learned and which step it kept, and whether the Library still holds it under
    its name (it may have been deleted or renamed since, and another embedding stored under the name)."""
    from trainers.ending import kept_note

    job = runner.get(job_id)
    name = state.embedding_name or job.name
    note = kept_note(state.kept_step, state.step) if state.kept_step is not None else ""
    kept = f" It {note}." if note else ""
    held = runner.stored_now(job, state)
    if held == "gone":
        st.info(f"Learned <{name}>: it was stored as <{name}>; {NO_LONGER_STORED}.{kept}")
    elif held == "other":
        st.warning(
            f"Learned <{name}>: it was stored as <{name}>; {NO_LONGER_STORED}: <{name}> there now is another "
            f"embedding.{kept}"
        )
    elif held == "unreadable":
        st.warning(
            f"Learned <{name}>: it was stored as <{name}>, but the Library's file of that name cannot be "
            f"read now (the Library's warning says why).{kept}"
        )
    elif state.warning:  # stored, but its previews doubt the concept was learned
        st.warning(f"Stored <{name}> in the Library.{kept} But {trainer_text(state.warning)}")
    else:
        st.success(f"Learned <{name}>: it is in the Library, ready for prompts as <{name}>.{kept}")
    st.page_link("views/library.py", label="Open the Library", icon="📚")


NO_LONGER_STORED = "it is no longer in the Library (deleted or renamed)"


def failed_text(state: RunState) -> str:
    """The trainer's failure in the page's words. Running out of memory gets advice the page can follow (the
    trainer's names CLI flags that no field here has): resume with gradient checkpointing, or start again
    with it; a run that had it already needs a GPU with more memory."""
    if (memory := state.out_of_memory) is None:
        return trainer_text(state.message)
    said = f"training ran out of memory ({memory.ran_out})"
    if memory.gradient_checkpointing:
        return (
            f"{said}; it already trains with gradient checkpointing, so it needs a GPU with more memory (the "
            "command line's `tokensmith train` has further memory settings)"
        )
    if state.can_resume:
        return (
            f"{said}; Resume with “with gradient checkpointing” on: it continues the run in less memory "
            "(slower; the numbers are the same)"
        )
    return (
        f"{said}; start it again with “{TRAIN_FIELDS[GRADIENT_CHECKPOINTING]}” on (under More options): it "
        "trains in less memory (slower; the numbers are the same)"
    )


def preview_image(path: Path):
    """A preview strip as the page shows it: a small one enlarged here with nearest-neighbour (stretched by
    the browser, 32 px samples are a smear)."""
    from PIL import Image

    from studio.app.pictures import enlarged

    with Image.open(path) as image:
        return enlarged(image.convert("RGB"), at_most=PREVIEW_W)


def note_text(note: str, run_dir: Path) -> str:
    """A trainer's note in the page's words; the run's own copy of the uploads (`runs/<job>/images`, a
    folder the user never chose) is 'uploaded': 'training on 4 image(s) from /home/…/images' -> 'training
    on 4 uploaded image(s)'."""
    found = IMAGES_NOTE.match(note)
    uploads = str(run_dir / "images")
    if found and found["folder"] in (uploads, str(Path(uploads).resolve())):
        note = f"training on {found['count']} uploaded image(s){found['rest']}"
    return trainer_text(note.replace(uploads, "the uploaded images"))


def trainer_text(text: str) -> str:
    """A message of the trainer's in the page's words: its flags become the form's fields ('use --vectors 7
    or fewer' -> 'use Vectors 7 or fewer')."""
    return context.studio_text(text, fields=TRAIN_FIELDS)


def stopped_text(state: RunState) -> str:
    """The trainer's `stopped` message in the studio's words: its CLI advice ('resume with --resume') becomes
    what the Resume button does ('stopped at step 12; resume with --resume' -> 'Stopped at step 12. Resume
    continues from the checkpoint at step 12.')."""
    said = trainer_text(state.message).split(";")[0].strip() or "stopped"
    said = said[0].upper() + said[1:]
    if state.can_resume:
        return f"{said}. Resume continues from the checkpoint at step {state.checkpoint_step}."
    return f"{said}."


def loss_chart_ui(rows: list[dict]) -> None:
    """Loss and validation loss against the step, each series drawn from its own points: validation is
    logged every N steps only, and a line through the empty steps between would never be drawn."""
    import altair as alt

    points = [
        {"step": row["step"], "series": series, "value": float(row[key])}
        for key, series in SERIES.items()
        for row in rows
        if isinstance(row.get(key), int | float) and "step" in row
    ]
    if not points:
        return
    colours = alt.Scale(domain=list(SERIES.values()), range=["#1f77b4", "#ff7f0e"])
    base = alt.Chart(alt.Data(values=points)).encode(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("value:Q", title="loss"),
        color=alt.Color("series:N", title=None, scale=colours, legend=alt.Legend(orient="bottom")),
        tooltip=["step:Q", "series:N", "value:Q"],
    )
    dots = base.transform_filter(alt.datum.series == SERIES["val_loss"]).mark_point(filled=True, size=40)
    st.altair_chart((base.mark_line() + dots).properties(height=220), width="stretch")


def _step_of(path) -> int:
    """'step-000050.png' -> 50."""
    return int(path.stem.split("-")[-1])


def actions_ui(runner: JobRunner, job_id: str, state: RunState) -> None:
    """Cancel while running; resume after a stop or a crash; train a finished job further."""
    try:
        if state.active and st.button("Cancel", key="cancel", icon="⏹️"):
            runner.cancel(job_id)
            st.toast("Asked the trainer to stop; it saves a checkpoint first.")
        if state.can_resume:
            resume_ui(runner, job_id, state)
        if state.status == "done":
            further_ui(runner, job_id, state)
    except context.user_errors() as exc:
        st.error(context.error_text(exc, fields=TRAIN_FIELDS))


def resume_ui(runner: JobRunner, job_id: str, state: RunState) -> None:
    """Resume, optionally with gradient checkpointing (on by default after running out of memory without
    it): a resume may add it, as it computes the same numbers in less memory."""
    memory = state.out_of_memory
    out_of_memory = memory is not None and not memory.gradient_checkpointing
    checkpointing = st.toggle(
        "with gradient checkpointing",
        value=out_of_memory,
        key="resume_checkpointing",
        help="less GPU memory, slower; the run computes the same numbers, so a resume may turn it on",
    )
    if st.button("Resume", key="resume", icon="▶️"):
        runner.resume(job_id, gradient_checkpointing=checkpointing)
        st.rerun()


def further_ui(runner: JobRunner, job_id: str, state: RunState) -> None:
    """More steps for a finished job: not offered where its config cannot change its steps, and a name
    that no longer holds its result is replaced only when asked (as the form asks)."""
    job = runner.get(job_id)
    if steps_fixed(job.run_dir):
        st.info(f"Train further is not offered for this run: {STEPS_FIXED}.")
        return
    more = st.number_input(
        "More steps",
        min_value=1,
        max_value=100_000,
        value=max(1, state.step // 2),
        key="more_steps",
        help="Continues from the last step with early stopping off, then replaces the stored "
        "embedding with what one longer run would have stored.",
    )
    name, held = state.embedding_name or job.name, runner.stored_now(job, state)
    replace = False
    if held == "gone":
        st.caption(f"<{name}> is no longer in the Library: training further stores its result as <{name}>.")
    elif held in ("other", "unreadable"):
        st.caption(taken_text(name, held) + ".")
        replace = st.toggle(REPLACE_LABEL, value=False, key="further_overwrite")
    if st.button("Train further", key="further", icon="⏩"):
        runner.train_further(job_id, int(more), replace_other=replace)
        st.rerun()


def progress_ui(runner: JobRunner, job_id: str) -> None:
    """The live panel: a fragment that re-reads the run folder every POLL_S while the job runs, and stops
    polling (a full rerun re-decorates it without a timer) once the job ends. The folder is read once per
    run: the page's run draws the state it read, each poll of the fragment alone reads it anew."""
    read = [runner.state(job_id)]  # taken by the page's own call of live(); a poll finds it empty
    active = read[0].active

    @st.fragment(run_every=POLL_S if active else None)
    def live() -> None:
        try:
            state = read.pop() if read else runner.state(job_id)
            state_ui(runner, job_id, state)
        except context.user_errors() as exc:  # a fragment's errors never reach the page's handler
            st.error(context.error_text(exc, fields=TRAIN_FIELDS))
            return
        if active and not state.active:
            st.rerun()

    live()
    job = runner.get(job_id)
    with st.expander("Command and config"):
        folder = RunFolder(job.run_dir)
        command = folder.command_path
        st.code(command.read_text() if command.exists() else " ".join(job.command), language="bash")
        config = folder.config_path
        if config.exists():
            st.code(config.read_text(), language="toml")
        st.caption(f"Run folder: `{job.run_dir}`")
