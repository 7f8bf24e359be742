"""Inspect: the nearest vocabulary tokens of an embedding, its vector norms against the vocabulary's, and a
2-D map (PCA) of the library and chosen words where clicking a point shows that embedding."""

from __future__ import annotations

import streamlit as st

from studio.app import cards, context
from studio.app.embedding_map import map_points


def pick_ui(names: list[str]) -> str:
    """The embedding to inspect: a click on the map, ?emb= from the URL, or the selectbox."""
    clicked = st.session_state.pop("insp_clicked", None)
    if clicked in names:
        st.session_state["insp_name"] = clicked
    elif "insp_name" not in st.session_state and st.query_params.get("emb") in names:
        st.session_state["insp_name"] = st.query_params["emb"]
    return st.selectbox("Embedding", names, key="insp_name")


ZERO_VECTOR = "(a zero vector: no direction)"


def neighbours_ui(emb, model, k: int) -> None:
    """Per vector (and per encoder for SDXL): the k closest ordinary tokens by cosine. An embedding that fits
    this model only partly shows the half that fits, with a note, as `tokensmith nearest` does."""
    from embeddings.inject import fitting_halves
    from embeddings.maths import nearest_tokens, norm_report

    shown, note = fitting_halves(emb, model.encoders, model_family=model.family)
    if note:  # before the tables: it says which half they show
        st.info(context.studio_text(note, fields=context.GENERATE_FIELDS))
    for (key, tok, te), vectors in shown:
        st.markdown(f"**{key}** · {vectors.shape[0]} vector(s) · width {vectors.shape[1]}")
        st.dataframe(
            neighbour_table(nearest_tokens(vectors, tok, te, k=k)), hide_index=False, width="stretch"
        )
        report = norm_report(vectors, tok, te)
        vocab = report["vocab"]
        st.caption(
            f"norms {report['norms']} · vocabulary mean {vocab['mean']} ± {vocab['std']} "
            f"(min {vocab['min']}, max {vocab['max']}) · ratio to mean {report['ratio_to_vocab_mean']}"
        )
        st.bar_chart(
            {"vector": [f"v{i}" for i in range(len(report["norms"]))] + ["vocab mean"],
             "norm": [*report["norms"], vocab["mean"]]},
            x="vector", y="norm", height=180,
        )  # fmt: skip


def neighbour_table(rows: list[list]) -> dict[str, list[str]]:
    """One column per vector, 'token (cosine)' best first, the token labelled as `tokensmith nearest` shows
    it ('c' the word, 'c…' a piece of one, '\\x07' a control byte); a zero vector (a blend's padding) has no
    neighbours and says so, its column padded so that every column has the same length (unequal columns
    turn the table over)."""
    length = max((len(row) for row in rows), default=0) or 1
    table = {}
    for i, row in enumerate(rows):
        cells = [f"{n.label} ({n.cosine:.2f})" for n in row] or [ZERO_VECTOR]
        table[f"vector {i}"] = cells + [""] * (length - len(cells))
    return table


def readable(store, entries: list) -> list:
    """The stored embeddings that load, with a warning naming each file that does not (a broken file must
    not take the whole map with it)."""
    embeddings = []
    for entry in entries:
        try:
            embeddings.append(store.get(entry.name))
        except context.user_errors() as exc:
            st.warning(cards.skipped_text(entry.path, context.error_text(exc)))
    return embeddings


def map_ui(store, model, entries: list) -> None:
    """The PCA map; a click on a library point selects it above."""
    import altair as alt

    names = [entry.name for entry in entries]
    words_text = st.text_input("Words to place on the map", "red, blue, circle, square", key="insp_words")
    words = [w.strip() for w in words_text.split(",") if w.strip()]
    points, skipped = map_points(readable(store, entries), words, model.encoders, model_family=model.family)
    for note in skipped:
        st.caption(f"not on the map: {context.studio_text(note, fields=context.GENERATE_FIELDS)}")
    if len(points) < 2:
        st.info("The map needs at least two points: add words or embeddings.")
        return
    data = [{"name": p.name, "kind": p.kind, "x": p.x, "y": p.y} for p in points]
    select = alt.selection_point(fields=["name"], name="pick")
    base = alt.Chart(alt.Data(values=data)).encode(
        x=alt.X("x:Q", title="PC 1"), y=alt.Y("y:Q", title="PC 2"), tooltip=["name:N", "kind:N"]
    )
    colours = alt.Scale(domain=["embedding", "word"], range=["#d62728", "#1f77b4"])
    dots = base.mark_circle(size=160).encode(
        color=alt.Color("kind:N", scale=colours),
        opacity=alt.condition(select, alt.value(1.0), alt.value(0.5)),
    ).add_params(select)  # fmt: skip
    labels = base.mark_text(dx=9, align="left").encode(text="name:N")
    event = st.altair_chart(dots + labels, on_select="rerun", key="insp_map", width="stretch")
    chosen = [p.get("name") for p in (event.selection.get("pick") or []) if isinstance(p, dict)]
    picked = chosen[0] if chosen else None
    # the chart keeps its selection across reruns: only a new one is a click, so the selectbox wins after it
    clicked = picked != st.session_state.get("insp_map_seen")
    st.session_state["insp_map_seen"] = picked
    if clicked and picked in names and picked != st.session_state.get("insp_name"):
        st.session_state["insp_clicked"] = picked
        st.rerun()
    elif picked is not None and picked not in names:
        st.caption(f'"{picked}" is a word, not a stored embedding.')


# --- the page ---

st.title("🔎 Inspect")
try:
    store = context.store()
    problems: list = []
    entries = store.list(problems=problems)  # headers only: a broken file is left out
    for path, reason in problems:
        st.warning(context.problem_text(store, path, reason))
    if not entries:
        st.info("The library is empty: train or import an embedding first.")
    else:
        name = pick_ui([entry.name for entry in entries])
        try:  # listed, but gone or unreadable since: said here, and the map still shows
            entry = store.entry(name)
            st.caption(" · ".join(filter(None, [cards.card_line(entry), cards.lineage_text(entry.meta)])))
        except context.user_errors() as exc:
            entry = None
            st.error(context.error_text(exc))
        model = context.loaded_model(context.model_spec())
        k = st.slider("Neighbours", 3, 20, 8, key="insp_k")
        if entry is not None:
            try:
                neighbours_ui(store.get(name), model, k)
            except context.user_errors() as exc:  # e.g. trained for another model: the map still shows
                st.error(context.error_text(exc, fields=context.GENERATE_FIELDS))
        st.subheader("Map of the library")
        map_ui(store, model, entries)
except context.user_errors() as exc:
    st.error(context.error_text(exc))
