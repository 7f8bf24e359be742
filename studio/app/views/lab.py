"""Lab (the foundations): the noise schedule, the x_t / predicted-x0 trace of one generation, and the same
seed with and without a loss guide, side by side."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from studio.app import context, formstate

CURVE_POINTS = (
    200  # the ᾱ_t / σ_t chart draws every k-th timestep (1000 points cost the browser, not insight)
)
# The engine's messages name CLI flags; here they name each tab's fields (context.error_text).
SCHEDULE_FIELDS = {"--steps": "Sampling steps"}
TRACE_FIELDS = {"--steps": "Steps", "--seed": "Seed"}
GUIDE_FIELDS = {**TRACE_FIELDS, "--guide": "Guide"}
DEFAULT_PROMPT = "a red circle on a blue background"
# The schedule chart's series in the order and colours of the figure `tokensmith schedule` draws
SERIES = {"ᾱ_t (signal kept)": "#1f77b4", "σ_t (noise std)": "#ff7f0e"}
FINAL_W = 192  # the trace's final image, beside a strip of 128 px cells
COMPARED_W = 384  # each of the guide tab's two images, half the page wide


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def shown(image, width: int):
    """`image` as the page shows it `width` px wide: a small one enlarged here with nearest-neighbour (the
    browser would smear it, beside the crisp trace strip). Sent as PNG: Streamlit's JPEG blurs the edges."""
    from studio.app.pictures import enlarged

    return enlarged(image, at_most=width)


def colour_stats(image, guide) -> str:
    """'R 0.41 · G 0.52 · B 0.30 · color=red loss 0.213': the pixels' mean colour, and the loss that `guide`
    (a parsed Guide) lowers, on the final image: what the guide moved, whatever it steers towards."""
    import torch

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    r, g, b = rgb.reshape(-1, 3).mean(axis=0)
    with torch.no_grad():
        loss = float(guide.loss(torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)))  # (1, 3, H, W)
    return f"R {r:.2f} · G {g:.2f} · B {b:.2f} · {guide.spec} loss {loss:.3g} (lower: closer)"


# --- the noise schedule ---


@st.cache_data(max_entries=64, show_spinner="Drawing the schedule…")
def schedule_plot(source: str, name: str, steps: int, _curves) -> bytes:
    """The matplotlib figure `tokensmith schedule` draws, as PNG bytes (cached: matplotlib takes a second)."""
    from studio.generation import plot_schedule

    with tempfile.TemporaryDirectory(prefix="tokensmith-schedule-") as tmp:
        return plot_schedule(_curves, Path(tmp) / "schedule.png", title=f"{source}: {name}").read_bytes()


def schedule_ui(session, _store) -> None:
    from studio.generation import SCHEDULERS, make_scheduler, schedule_curves

    c1, c2 = st.columns(2)
    names = list(SCHEDULERS)
    name = c1.selectbox("Scheduler", names, key=formstate.kept("lab_sched", names[0]))
    steps = c2.slider("Sampling steps", 1, 100, key=formstate.kept("lab_sched_steps", 20))
    curves = schedule_curves(make_scheduler(name, session.model.pipe.scheduler.config), steps)
    every = max(1, len(curves.alphas_cumprod) // CURVE_POINTS)
    t = list(range(0, len(curves.alphas_cumprod), every))
    alpha, sigma = SERIES
    chart = {
        "timestep t": t,
        alpha: curves.alphas_cumprod[t].tolist(),
        sigma: curves.sigmas[t].tolist(),
    }
    st.line_chart(chart, x="timestep t", y=list(SERIES), color=list(SERIES.values()), height=240)
    note = curves.explanation() and f" {curves.explanation()}; “model runs at t” lists where the model runs."
    st.caption(
        "x_t = √ᾱ_t · x0 + σ_t · ε. The sampler visits the timesteps below, from noise (ᾱ≈0) to a picture."
        + note
    )
    st.dataframe(curves.table(), hide_index=True, height=200, column_config=schedule_columns())
    with st.expander("The plot as `tokensmith schedule` draws it"):  # the chart above, for a file or a paper
        data = schedule_plot(session.model.source, name, steps, curves)
        st.image(data)
        st.download_button(
            "Download the plot", data, file_name=f"schedule-{name}.png", mime="image/png", key="lab_dl"
        )


def schedule_columns() -> dict:
    """The schedule table's columns in the chart's words, narrow (a phone shows them without scrolling)."""
    number = st.column_config.NumberColumn
    return {
        "step": number("step", width="small"),
        "timestep": number("t", width="small"),
        "alpha_bar": number("ᾱ (signal kept)", format="%.4f", width="small"),
        "sigma": number("σ (noise)", format="%.4f", width="small"),
        "k_sigma": number("k-σ", format="%.3g", width="small"),
        "evaluated_at": st.column_config.ListColumn("model runs at t", width="small"),
    }


# --- trace and guide ---


def run_ui(prefix: str) -> dict:
    """Prompt, seed and steps of one tab."""
    c1, c2, c3 = st.columns([3, 1, 1])
    prompt = c1.text_input("Prompt", key=formstate.kept(f"{prefix}_prompt", DEFAULT_PROMPT))
    seed = c2.number_input("Seed", 0, 2**31 - 1, key=formstate.kept(f"{prefix}_seed", 0))
    steps = c3.number_input("Steps", 2, 100, key=formstate.kept(f"{prefix}_steps", 20))
    return {"prompt": prompt, "seed": int(seed), "steps": int(steps)}


def require_prompt(settings: dict) -> None:
    """The Lab's rule is Generate's: an empty prompt is refused, not sampled as the unconditional image."""
    if not settings["prompt"].strip():
        raise ValueError("write a prompt first")


def trace_ui(session, store) -> None:
    from studio.generation import GenerateRequest
    from studio.generation.trace import default_trace_steps

    settings = run_ui("lab_trace")
    count = st.slider("Columns (traced steps)", 2, 10, key=formstate.kept("lab_trace_cols", 6))
    if st.button("Trace", key="lab_trace_go"):
        require_prompt(settings)
        steps = tuple(default_trace_steps(settings["steps"], count))
        with st.spinner("Sampling with a trace…"):
            [result] = session.generate(GenerateRequest(**settings, trace_steps=steps), store=store)
        st.session_state["lab_trace"] = (png(result.trace), png(result.image))
    if "lab_trace" in st.session_state:
        from PIL import Image

        strip, final = st.session_state["lab_trace"]
        st.image(
            strip, caption="top: x_t decoded as it is; bottom: the model's prediction of the clean image"
        )
        final_image = shown(Image.open(io.BytesIO(final)), FINAL_W)
        st.image(final_image, caption="the final image", width=FINAL_W, output_format="PNG")


def guide_ui(session, store) -> None:
    from studio.generation import GenerateRequest, parse_guide

    settings = run_ui("lab_guide")
    spec = st.text_input(
        "Guide", key=formstate.kept("lab_guide_spec", "color=green"), help="as in Generate's guides"
    )
    if st.button("Compare", key="lab_guide_go"):
        require_prompt(settings)
        guide = parse_guide(spec)  # a clear error before any sampling
        with st.spinner("Sampling twice, same seed…"):
            [plain] = session.generate(GenerateRequest(**settings), store=store)
            [guided] = session.generate(GenerateRequest(**settings, guides=(spec,)), store=store)
        st.session_state["lab_guide"] = (png(plain.image), png(guided.image), spec)
        # measured now: the guide's loss may read a file (match=PATH) that later reruns must not depend on
        st.session_state["lab_guide_stats"] = (
            colour_stats(plain.image, guide),
            colour_stats(guided.image, guide),
        )
    if "lab_guide" in st.session_state:
        from PIL import Image

        plain, guided, used = st.session_state["lab_guide"]
        stats = st.session_state.get("lab_guide_stats", ("", ""))
        c1, c2 = st.columns(2)
        for col, data, label, said in zip(
            (c1, c2), (plain, guided), ("without a guide", f"with {used}"), stats, strict=True
        ):
            col.image(shown(Image.open(io.BytesIO(data)), COMPARED_W), caption=label, output_format="PNG")
            col.caption(said)


def lab_error_text(exc: BaseException, fields: dict[str, str]) -> str:
    """`context.error_text` in the tab's fields, except out of memory: the engine's advice is a smaller
    Width/Height or fewer guides, and the Lab has neither (it samples at the model's native size, and
    compares one guide with none)."""
    from embeddings.errors import first_line
    from trainers.memory import is_out_of_memory

    cause = exc.__cause__ or exc  # the engine's advice wraps torch's error: its own words are not shown
    if not is_out_of_memory(cause):
        return context.error_text(exc, fields=fields)
    return (
        f"sampling ran out of memory ({first_line(cause)[:160]}); the Lab samples at the model's native "
        "size and cannot go smaller: free memory on the device (a training job or another tab's generation "
        "holds some) and try again"
    )


# --- the page ---

formstate.remember()  # first: another page may be opened before this run reaches the widgets
st.title("🔬 Lab")
schedule_tab, trace_tab, guide_tab = st.tabs(["Noise schedule", "Trace", "Loss guide"])
tabs = (
    (schedule_tab, schedule_ui, SCHEDULE_FIELDS),
    (trace_tab, trace_ui, TRACE_FIELDS),
    (guide_tab, guide_ui, GUIDE_FIELDS),
)
for tab, tab_ui, fields in tabs:
    with tab:
        try:  # each tab on its own: a bad choice in one leaves the others working
            tab_ui(context.generation_session(context.model_spec()), context.store())
        except context.user_errors() as exc:
            st.error(lab_error_text(exc, fields))
