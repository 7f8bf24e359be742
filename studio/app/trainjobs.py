"""The Train page's job panel: pick a job, watch it (status, progress, loss chart, previews, the trainer's
notes in the form's words) and act on it (cancel, resume, train further)."""

from __future__ import annotations

import streamlit as st

from studio.app import context
from studio.jobs import GRADIENT_CHECKPOINTING, JobRunner
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
    labels = {job.id: f"{job.name}  ·  {job.id}" for job in jobs}
    chosen = st.selectbox("Job", ids, index=index, format_func=labels.get, key=f"job_pick_{ids[index]}")
    if st.query_params.get("job") != chosen:
        st.query_params["job"] = chosen
    return chosen


def progress_text(state: RunState) -> str:
    """'step 40/150 · loss 0.1234 · val 0.1100 · metric 29.41 · ETA 12 s' (a finished run: its seconds)."""
    return progress_line(
        state.step,
        state.total,
        loss=state.loss,
        val_loss=state.val_loss,
        metric=state.metric,
        eta=state.eta if state.active else None,
        elapsed=state.elapsed,
    )


def state_ui(runner: JobRunner, job_id: str, state: RunState) -> None:
    """Status, progress, loss curve, latest previews and the actions that fit the state."""
    st.markdown(f"**{STATUS_ICONS.get(state.status, '')} {state.status}** — `{job_id}`")
    st.progress(state.fraction, text=progress_text(state))
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
    if state.notes:
        with st.expander("What the trainer noted about the data", expanded=state.active):
            for note in state.notes:
                st.caption(trainer_text(note))
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
            st.image(shown.read_bytes(), caption=caption, width="stretch")
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
        {"step": row["step"], "series": key, "value": float(row[key])}
        for key in ("loss", "val_loss")
        for row in rows
        if isinstance(row.get(key), int | float) and "step" in row
    ]
    if not points:
        return
    colours = alt.Scale(domain=["loss", "val_loss"], range=["#1f77b4", "#ff7f0e"])
    base = alt.Chart(alt.Data(values=points)).encode(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("value:Q", title="loss"),
        color=alt.Color("series:N", title=None, scale=colours, legend=alt.Legend(orient="bottom")),
        tooltip=["step:Q", "series:N", "value:Q"],
    )
    dots = base.transform_filter(alt.datum.series == "val_loss").mark_point(filled=True, size=40)
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
