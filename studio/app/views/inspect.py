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


def neighbours_ui(emb, encoders, k: int) -> None:
    """Per vector (and per encoder for SDXL): the k closest ordinary tokens by cosine."""
    from embeddings import vectors_for_encoders
    from embeddings.maths import nearest_tokens, norm_report

    for (key, tok, te), vectors in zip(encoders, vectors_for_encoders(emb, encoders), strict=True):
        st.markdown(f"**{key}** · {vectors.shape[0]} vector(s) · width {vectors.shape[1]}")
        table = {}
        for i, row in enumerate(nearest_tokens(vectors, tok, te, k=k)):
            table[f"vector {i}"] = [f"{n.token} ({n.cosine:.2f})" for n in row]
        st.dataframe(table, hide_index=False, width="stretch")
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


def readable(store, names: list[str]) -> list:
    """The stored embeddings that load, with a warning naming each file that does not (a broken file must
    not take the whole map with it)."""
    embeddings = []
    for name in names:
        try:
            embeddings.append(store.get(name))
        except context.user_errors() as exc:
            st.warning(cards.skipped_text(store.path(name), context.error_text(exc)))
    return embeddings


def map_ui(store, encoders, names: list[str]) -> None:
    """The PCA map; a click on a library point selects it above."""
    import altair as alt

    words_text = st.text_input("Words to place on the map", "red, blue, circle, square", key="insp_words")
    words = [w.strip() for w in words_text.split(",") if w.strip()]
    points, skipped = map_points(readable(store, names), words, encoders)
    for note in skipped:
        st.caption(f"not on the map: {note}")
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
    names = [entry.name for entry in store.list(problems=problems)]  # headers only: a broken file is left out
    for path, reason in problems:
        st.warning(cards.skipped_text(path, reason))
    if not names:
        st.info("The library is empty: train or import an embedding first.")
    else:
        name = pick_ui(names)
        entry = store.entry(name)
        st.caption(f"{cards.card_line(entry)} · {cards.lineage_text(entry.meta)}")
        model = context.loaded_model(context.model_spec())
        k = st.slider("Neighbours", 3, 20, 8, key="insp_k")
        try:
            neighbours_ui(store.get(name), model.encoders, k)
        except context.user_errors() as exc:  # e.g. trained for another model: the map still shows
            st.error(context.error_text(exc))
        st.subheader("Map of the library")
        map_ui(store, model.encoders, names)
except context.user_errors() as exc:
    st.error(context.error_text(exc))
