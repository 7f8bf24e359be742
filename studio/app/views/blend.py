"""Blend: mix stored embeddings and words with weights (lerp or slerp, keep-norm), preview the mix on a
fixed-seed grid (weights × seeds) that follows the sliders, and save it with its lineage."""

from __future__ import annotations

import io

import streamlit as st

from embeddings.blend_expr import Operand
from studio.app import blending, cards, context, formstate

MAX_OPERANDS = 4
REPLACE_LABEL = "Replace a stored embedding of the same name"  # as on Train
PREVIEW_NAME = "blend"  # the preview's trigger while the Name field holds nothing usable
KINDS = ["library", "word"]
WORD_HELP = (
    "As in `tokensmith blend`: each word must be one token of the model's vocabulary (a word it splits into "
    "pieces is refused: the mix would be of letter fragments). In quotes ('red car'), all its tokens are "
    "blended on purpose."
)


# --- widgets ---


def operands_ui(names: list[str]) -> list[tuple[Operand, float]]:
    """2–4 (operand, weight) rows: each a library embedding or a word, with a weight slider."""
    count = int(st.number_input("Operands", 2, MAX_OPERANDS, key=formstate.kept("bl_count", 2)))
    # sliders keep their values by key: a new operand count starts every weight at 1/count again
    fresh = st.session_state.get("bl_weights_for") != count
    st.session_state["bl_weights_for"] = count
    for i in range(count):
        if fresh:
            st.session_state[f"bl_w_{i}"] = round(1.0 / count, 2)
    operands = []
    for i in range(count):
        c1, c2, c3 = st.columns([1, 2, 2], vertical_alignment="bottom")
        kind_key = formstate.kept(f"bl_kind_{i}", KINDS[0] if len(names) > i else KINDS[1])
        kind = c1.radio(f"#{i + 1}", KINDS, key=kind_key)
        if kind == "library":
            if not names:
                c2.caption("the library is empty: use a word")
                value = ""
            else:
                emb_key = formstate.kept(f"bl_emb_{i}", names[min(i, len(names) - 1)], options=names)
                value = c2.selectbox("Embedding", names, key=emb_key)
        else:
            word_key = formstate.kept(f"bl_word_{i}", "")
            value = c2.text_input("Word or phrase", key=word_key, placeholder="typewriter", help=WORD_HELP)
        weight = c3.slider(
            "Weight", -1.0, 2.0, step=0.05, key=formstate.kept(f"bl_w_{i}", round(1.0 / count, 2))
        )
        operands.append((Operand("embedding" if kind == "library" else "word", value), float(weight)))
    return operands


def method_ui(count: int) -> tuple[str, bool]:
    c1, c2 = st.columns(2)
    methods = ["lerp", "slerp"] if count == 2 else ["lerp"]
    method = c1.radio(
        "Method", methods, horizontal=True, key=formstate.kept("bl_method", methods[0], options=methods),
        help="slerp mixes exactly two",
    )  # fmt: skip
    keep_norm = c2.toggle(
        "Keep the operands' norm", key=formstate.kept("bl_keep_norm", False), help="blends otherwise shrink"
    )
    return method, keep_norm


def name_ui() -> str:
    """The blend's name, or '' after saying under the field why it cannot be used (the preview still draws:
    it needs no name)."""
    from embeddings import validate_name

    name = st.text_input("Name of the blend", key=formstate.kept("bl_name", "blend")).strip()
    if not name:
        st.info("Give the blend a name to save it to the library.")
        return ""
    try:
        validate_name(name)
    except context.user_errors() as exc:
        st.error(context.error_text(exc))
        return ""
    return name


def preview_settings_ui() -> dict:
    from studio.generation import parse_seeds

    c1, c2, c3 = st.columns([3, 1, 1])
    prompt = c1.text_input("Preview prompt (* is the blend)", key=formstate.kept("bl_prompt", "a *"))
    seeds = parse_seeds(c2.text_input("Seeds", key=formstate.kept("bl_seeds", "0,1")))
    steps = c3.number_input("Steps", 1, 50, key=formstate.kept("bl_steps", 12))
    sweep = st.toggle(
        "Sweep the mix of the first two operands (rows t = 0 … 1)", key=formstate.kept("bl_sweep", False)
    )
    return {"prompt": prompt, "seeds": seeds[:6], "steps": int(steps), "sweep": sweep}


# --- rendering ---


@st.cache_data(max_entries=512, show_spinner=False)
def preview_cell(
    spec: str, sha256: str, prompt: str, named: tuple, seed: int, steps: int, _session, _store
) -> bytes:
    """One fixed-seed image of a blend, as PNG bytes; cached by the blend's vectors and the stored files of
    the other embeddings the prompt names (`named`), so moving a slider back to an earlier value shows its
    images at once, and a retrained <cat> in the prompt draws anew."""
    from studio.generation import GenerateRequest

    [result] = _session.generate(GenerateRequest(prompt=prompt, seed=seed, steps=steps), store=_store)
    buffer = io.BytesIO()
    result.image.save(buffer, format="PNG")
    return buffer.getvalue()


def preview_grid(session, store, parts, rows, name, method, keep_norm, settings):
    """The labelled grid as PNG bytes (rows: weights, columns: seeds), the blend at the sliders' weights, and
    its first image (the library thumbnail when it is saved)."""
    from PIL import Image

    from studio.generation import compose

    prompt = blending.preview_prompt(settings["prompt"], name)
    spec = context.model_spec()
    named = blending.stored_versions(prompt, store, exclude=name)

    def cell(emb, seed: int) -> Image.Image:
        view = blending.PreviewStore(store, emb)
        png = preview_cell(spec, emb.sha256, prompt, named, seed, settings["steps"], session, view)
        return Image.open(io.BytesIO(png))

    def mix(weights: list[float]):
        weighted = [(emb, w) for (emb, _), w in zip(parts, weights, strict=True)]
        return blending.make_blend(weighted, name, method=method, keep_norm=keep_norm, model=session.model)

    operands, weights = [op for op, _ in rows], [w for _, w in rows]
    cells, labels = [], []
    for row_weights in blending.weight_rows(weights, settings["sweep"]):
        cells.append([cell(mix(row_weights), seed) for seed in settings["seeds"]])
        labels.append(blending.row_label(operands, row_weights, method, t_first=True))
    grid = compose(cells, labels, [f"seed {s}" for s in settings["seeds"]])
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    current = mix(weights)
    return buffer.getvalue(), current, cell(current, settings["seeds"][0])


def save_ui(store, blended, thumbnail) -> None:
    """Save the blend at the sliders' weights into the library (lineage is in its metadata). Unlike the
    other fields, the Replace toggle is not kept while another page is open (formstate): replacing a stored
    embedding is chosen anew."""
    overwrite = st.toggle(REPLACE_LABEL, key="bl_overwrite")
    if st.button(f"Save <{blended.name}> to the library", type="primary", key="bl_save"):
        if store.exists(blended.name) and not overwrite:
            st.error(cards.name_taken_text(blended.name, REPLACE_LABEL))
            return
        store.put(blended, overwrite=overwrite, preview=thumbnail)
        st.success(f"Saved <{blended.name}>: use it in prompts, or find it in the Library.")


# --- the page ---

formstate.remember()  # first: another page may be opened before this run reaches the widgets
st.title("🧪 Blend")
st.caption(
    "Token-level mixing: weighted sums of stored embeddings and ordinary words (the fast.ai experiment)."
)
try:
    store = context.store()
    widths = context.loaded_model(context.model_spec()).widths
    rows = operands_ui(blending.fitting_first(store.list(), widths))
    method, keep_norm = method_ui(len(rows))
    name = name_ui()
    settings = preview_settings_ui()
    if not all(op.text.strip() for op, _ in rows):
        st.info("Choose every operand (an embedding from the library, or a word) to see the preview.")
    else:
        session = context.generation_session(context.model_spec())
        parts = blending.resolve(rows, store, session.model)
        shown = name or PREVIEW_NAME  # no usable name yet: the preview draws, Save waits for one
        with st.spinner("Rendering the preview grid…"):
            grid, blended, thumbnail = preview_grid(
                session, store, parts, rows, shown, method, keep_norm, settings
            )
        operands, weights = [op for op, _ in rows], [w for _, w in rows]
        st.image(grid, caption=f"<{shown}> = " + blending.row_label(operands, weights, method))
        if name:  # else name_ui said under the field what it needs
            save_ui(store, blended, thumbnail)
except context.user_errors() as exc:
    st.error(context.error_text(exc))
