"""Inspect: the nearest vocabulary tokens of an embedding, its vector norms against the vocabulary's, and a
2-D map (PCA) of the library and chosen words where clicking a point shows that embedding."""

from __future__ import annotations

import streamlit as st

from studio.app import blending, cards, context, formstate
from studio.app.embedding_map import map_points


def pick_ui(names: list[str], misfits: set[str]) -> str:
    """The embedding to inspect: a click on the map, ?emb= from the URL, or the selectbox. `names` come
    those that fit the model first (blending.fitting_first: the page opens on one it can show), and
    `misfits` are marked, as on Generate."""
    clicked = st.session_state.pop("insp_clicked", None)
    if clicked in names:
        st.session_state["insp_name"] = clicked
    elif "insp_name" not in st.session_state and st.query_params.get("emb") in names:
        st.session_state["insp_name"] = st.query_params["emb"]
    return st.selectbox(
        "Embedding", names, key="insp_name", format_func=lambda name: misfit_label(name, misfits)
    )


def misfit_label(name: str, misfits: set[str]) -> str:
    """'bad-hands (not for this model)' for one made for another model, as Generate's Library list says."""
    return f"{name} (not for this model)" if name in misfits else name


SINGLE_ENCODER = "emb_params"  # the key of an SD 1.x/2.x embedding's one tensor: nothing a user chose


ZERO_VECTOR = "(a zero vector: no direction)"


def neighbours_ui(emb, model, k: int) -> None:
    """Per vector (and per encoder for SDXL): the k closest ordinary tokens by cosine. An embedding that fits
    this model only partly shows the half that fits, with a note, as `tokensmith nearest` does."""
    from embeddings import token_names
    from embeddings.inject import fitting_halves
    from embeddings.maths import nearest_tokens, norm_report

    shown, note = fitting_halves(emb, model.encoders, model_family=model.family)
    if note:  # before the tables: it says which half they show
        st.info(cards.inert(context.studio_text(note, fields=context.GENERATE_FIELDS)))
    tokens = token_names(emb)  # the columns, as `tokensmith nearest` names the vectors
    for (key, tok, te), vectors in shown:
        st.markdown(encoder_heading(key, vectors.shape))
        st.dataframe(neighbour_frame(nearest_tokens(vectors, tok, te, k=k), tokens), width="stretch")
        st.caption(NEIGHBOURS_KEY)
        report = norm_report(vectors, tok, te)
        st.caption(norms_text(report, tokens))
        bars = [*tokens, "vocab mean"]
        st.bar_chart(  # across: the labels read left to right (`<cat>_1`, not rotated)
            {"vector": bars, "norm": [*report["norms"], report["vocab"]["mean"]]},
            x="vector", y="norm", horizontal=True, sort=False, height=BAR_H * len(bars) + 60,
        )  # fmt: skip


NEIGHBOURS_KEY = (
    "Each cell: a vocabulary token and its cosine similarity to the vector (1: the same direction); "
    "'gree…' is a piece of a longer word"
)
BAR_H = 28  # px per bar of the norm chart


def encoder_heading(key: str, shape) -> str:
    """'2 vector(s) · width 64' above an encoder's table; SDXL's two say which ('**clip_g** · …')."""
    said = f"{shape[0]} vector(s) · width {shape[1]}"
    return said if key == SINGLE_ENCODER else f"**{key}** · {said}"


def neighbour_frame(rows: list[list], tokens: list[str]):
    """neighbour_table as a table ranked from 1, the closest first."""
    import pandas as pd

    table = pd.DataFrame(neighbour_table(rows, tokens))
    table.index = pd.RangeIndex(1, len(table) + 1, name="rank")
    return table


def neighbour_table(rows: list[list], tokens: list[str]) -> dict[str, list[str]]:
    """One column per vector, headed by its token (`<cat>`, `<cat>_1`), 'token (cosine)' best first, the
    token labelled as `tokensmith nearest` shows it ('c' the word, 'c…' a piece of one, '\\x07' a control
    byte); a zero vector (a blend's padding) has no neighbours and says so, its column padded so that every
    column has the same length (unequal columns turn the table over)."""
    length = max((len(row) for row in rows), default=0) or 1
    table = {}
    for token, row in zip(tokens, rows, strict=True):
        cells = [f"{n.label} ({n.cosine:.3f})" for n in row] or [ZERO_VECTOR]
        table[token] = cells + [""] * (length - len(cells))
    return table


def norms_text(report: dict, tokens: list[str]) -> str:
    """embeddings.maths.norm_report in words, with `tokensmith nearest`'s 3 digits: 'norms <cat> 0.35,
    <cat>_1 0 · vocabulary mean 0.176 ± 0.0213 (min 0.101, max 0.302) · ratio to the mean 1.99, 0'."""
    vocab = report["vocab"]
    norms = ", ".join(f"{token} {norm:.3g}" for token, norm in zip(tokens, report["norms"], strict=True))
    # None: a vocabulary whose mean norm is 0 gives no ratio
    ratios = ", ".join("–" if ratio is None else f"{ratio:.3g}" for ratio in report["ratio_to_vocab_mean"])
    return (
        f"norms {norms} · vocabulary mean {vocab['mean']:.3g} ± {vocab['std']:.3g} "
        f"(min {vocab['min']:.3g}, max {vocab['max']:.3g}) · ratio to the mean {ratios}"
    )


# Embeddings made for other models, each with its own reason up to this many; more share one line. 0: they
# always share it (the reason is the same long sentence for each, and the list marks them already).
OTHERS_ONE_BY_ONE = 0


@st.cache_resource(max_entries=4096, show_spinner=False)
def stored_embedding(path: str, version: tuple[int, int, int], name: str, _store):
    """The stored embedding `name`, read (and its sha256 checked) once per version of its file: the key is
    the file's path and version (embeddings.files.file_version), so an overwritten or deleted file shows at
    the next rerun. Shared, not copied per rerun as st.cache_data would (2.5x slower for 800 files): no
    operation writes into an Embedding."""
    return _store.get(name)


def load(store, entry):
    """`entry`'s embedding, from the cache while its file is unchanged; the store's error when it does not
    load (a file gone since the listing: the store says so in its words)."""
    from embeddings.files import file_version

    version = file_version(entry.path)
    if version is None:
        return store.get(entry.name)
    return stored_embedding(str(entry.path), version, entry.name, store)


def readable(store, entries: list) -> list:
    """The stored embeddings that load, with a warning naming each file that does not (a broken file must
    not take the whole map with it)."""
    embeddings = []
    for entry in entries:
        try:
            embeddings.append(load(store, entry))
        except context.user_errors() as exc:
            st.warning(cards.skipped_text(entry.path, context.error_words(exc)))
    return embeddings


def other_models_text(others: list, model) -> str:
    """One line for the embeddings made for other models than `model` (their header widths say so; none is
    read): 'not on the map: 3 embeddings made for other models than this one (SD 1.x): SDXL 2, SD 2.x 1;
    set the sidebar's Model to one of theirs to map them'."""
    from collections import Counter

    from embeddings import family_title

    counts = Counter(family_title(entry.family) for entry in others)
    most_first = sorted(counts.items(), key=lambda family_count: (-family_count[1], family_count[0]))
    families = ", ".join(f"{family} {n}" for family, n in most_first)
    what = "embedding made for another model" if len(others) == 1 else "embeddings made for other models"
    return (
        f"not on the map: {len(others)} {what} than this one ({family_title(model.family)}): {families}; "
        "set the sidebar's Model to one of theirs to map them"
    )


def map_ui(store, model, entries: list) -> None:
    """The PCA map; a click on a library point selects it above."""
    import altair as alt

    names = [entry.name for entry in entries]
    words_key = formstate.kept("insp_words", "red, blue, circle, square")
    words_text = st.text_input("Words to place on the map", key=words_key)
    words = [w.strip() for w in words_text.split(",") if w.strip()]
    fitting, others = blending.made_for(entries, model.widths)  # headers only: the others are not read
    one_by_one = len(others) <= OTHERS_ONE_BY_ONE  # with none of them, the fitting ones alone are read
    mapped = readable(store, entries if one_by_one else fitting)
    points, skipped = map_points(mapped, words, model.encoders, model_family=model.family)
    for note in skipped:
        st.caption(
            f"not on the map: {cards.inert(context.studio_text(note, fields=context.GENERATE_FIELDS))}"
        )
    if others and not one_by_one:
        st.caption(cards.literal(other_models_text(others, model)))  # family labels are the files' words
    if len(points) < 2:
        st.info("The map needs at least two points: add words or embeddings.")
        return
    data = [{"name": p.name, "kind": p.kind, "x": p.x, "y": p.y} for p in points]
    select = alt.selection_point(fields=["name"], name="pick")
    base = alt.Chart(alt.Data(values=data)).encode(
        x=alt.X("x:Q", title="PC 1"), y=alt.Y("y:Q", title="PC 2"), tooltip=["name:N", "kind:N"]
    )
    colours = alt.Scale(domain=["embedding", "word"], range=["#d62728", "#1f77b4"])
    legend = alt.Legend(orient="bottom")  # beside the plot it takes a third of a phone's width
    dots = base.mark_circle(size=160).encode(
        color=alt.Color("kind:N", scale=colours, legend=legend),
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

formstate.remember()  # first: another page may be opened before this run reaches the widgets
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
        model = context.loaded_model(context.model_spec())
        _fits, others = blending.made_for(entries, model.widths)  # headers only
        name = pick_ui(blending.fitting_first(entries, model.widths), {entry.name for entry in others})
        try:  # listed, but gone or unreadable since: said here, and the map still shows
            entry = store.entry(name)
            line = " · ".join(filter(None, [cards.card_line(entry), cards.lineage_text(entry.meta)]))
            st.caption(cards.literal(line))  # the file's own words, never Markdown
        except context.user_errors() as exc:
            entry = None
            st.error(context.error_text(exc))
        k = st.slider("Neighbours", 3, 20, key=formstate.kept("insp_k", 8))
        if entry is not None:
            try:
                neighbours_ui(load(store, entry), model, k)
            except context.user_errors() as exc:  # e.g. trained for another model: the map still shows
                st.error(context.error_text(exc, fields=context.GENERATE_FIELDS))
        st.subheader("Map of the library")
        map_ui(store, model, entries)
except context.user_errors() as exc:
    st.error(context.error_text(exc))
