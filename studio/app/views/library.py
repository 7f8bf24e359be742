"""Library: the stored embeddings as a gallery; search, details, rename, delete/restore, import, export (the
import, and the ways out for files the listing skips, are `libraryfiles`)."""

from __future__ import annotations

import io

import streamlit as st

from embeddings.canonical import FORMAT_PT
from studio.app import cards, context, libraryfiles
from studio.app.cards import code, literal

COLUMNS = 4
PAGE_SIZE = 28  # cards per page: each card is drawn, and its thumbnail read and sent, at every rerun


# --- widgets ---


def filter_ui(entries: list) -> tuple[str, list[str]]:
    """Search text and the families to show."""
    c1, c2 = st.columns([3, 2])
    query = c1.text_input("Search", key="lib_query", placeholder="name, init word, lineage…")
    families = sorted({e.family for e in entries})
    chosen = c2.multiselect(
        "Families", families, default=families, format_func=cards.family_words,
        key=f"lib_families_{'-'.join(families)}",
    )  # fmt: skip
    return query, chosen


def page_ui(shown: list, search: tuple, selected: str | None) -> tuple[int, int]:
    """The gallery page to draw, as (start, stop) indices of `shown`, with a page number field when the
    matches fill more than one page. The page is kept in session_state: a new search (or family choice)
    starts at page 1, and a first visit with ?emb= starts at the page that holds that card."""
    pages = max(1, -(-len(shown) // PAGE_SIZE))
    state = st.session_state
    if state.get("lib_page_for") != search:
        names = [e.name for e in shown]
        first_visit = "lib_page_for" not in state and selected in names
        state["lib_page"] = names.index(selected) // PAGE_SIZE + 1 if first_visit else 1
        state["lib_page_for"] = search
    state["lib_page"] = min(max(int(state.get("lib_page", 1)), 1), pages)  # fewer pages after a delete
    if pages > 1:
        st.number_input(f"Page (of {pages})", 1, pages, key="lib_page")
    start = (int(state["lib_page"]) - 1) * PAGE_SIZE
    return start, min(start + PAGE_SIZE, len(shown))


def gallery_ui(entries: list) -> None:
    """Cards with preview, family, vectors, steps and lineage; 'Open' selects one for the details panel.
    Every card has a square picture (the preview's first sample, or a 'no preview' square), so the cards of
    a row line up."""
    for start in range(0, len(entries), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, entry in zip(cols, entries[start : start + COLUMNS], strict=False):
            with col.container(border=True):
                image = preview_ui(entry)
                if image is None:  # both as wide, so the cards of a row line up
                    st.image(cards.NO_PREVIEW_SVG, width=cards.CARD_SIDE)
                else:  # PNG: JPEG would smear the enlarged pixels
                    st.image(cards.card_picture(image), width=cards.CARD_SIDE, output_format="PNG")
                st.markdown(f"**&lt;{entry.name}&gt;**")
                st.caption(literal(cards.card_line(entry)))  # the header's values: shown, never Markdown
                lineage = cards.lineage_text(entry.meta)
                if lineage:
                    st.caption(literal(lineage))
                if st.button("Open", key=f"open_{entry.name}"):
                    st.session_state["lib_selected"] = entry.name
                    st.query_params["emb"] = entry.name


def details_ui(store, name: str) -> None:
    """Everything about one embedding and what can be done with it (loaded first: a file that does not load
    raises before anything is drawn, and `unloadable_ui` takes its place)."""
    entry = store.entry(name)
    emb = store.get(name)
    st.subheader(f"<{name}>")
    left, right = st.columns([2, 3])
    with left:
        image = preview_ui(entry)
        if image is not None:
            st.image(cards.details_picture(image), output_format="PNG")
        st.markdown(f"**{literal(cards.card_line(entry))}**  \n{literal(widths_text(entry.widths))}")
    with right:
        rows = cards.details_rows(entry)  # the header's values: shown as written, never Markdown
        st.markdown("  \n".join(f"**{label}:** {literal(value)}" for label, value in rows.items()))
        st.caption("sha256 of the vectors")
        st.code(emb.sha256, language=None, wrap_lines=True)
    with st.expander("Raw metadata"):
        st.caption(
            f"The file's header as stored. `format: pt` is {FORMAT_PT}: the file is a .safetensors file "
            "whatever it was imported from."
        )
        st.json(cards.raw_metadata(entry.meta))
    export_ui(emb, entry)
    manage_ui(store, name)


def unloadable_ui(store, entry, exc: BaseException) -> None:
    """The details panel of a listed embedding that does not load (a corrupted file, or one changed or
    removed since the listing; a file under a name the store refuses is never listed,
    `libraryfiles.problems_ui` offers its ways out): what is wrong, and the ways out, Move to the trash and
    Close; the rest of the page (Doctor, Import, Trash) stays."""
    name = entry.name
    st.subheader(f"<{name}>")
    st.error(literal(f"<{name}> cannot be opened: {context.error_words(exc)}"))
    c1, c2, _ = st.columns([1, 1, 3])
    if c1.button("Move to the trash", key="lib_trash_unloadable", icon="🗑️"):
        try:
            store.delete(name)
        except context.user_errors() as refused:
            st.error(
                f"{literal(context.error_words(refused))}. Move {code(entry.path.name)} out of the library "
                f"folder {code(str(store.root))} by hand to clear it."
            )
        else:
            close_details()
            st.toast(f"Moved <{name}> to the trash: restore it below")
            st.rerun()
    if c2.button("Close", key="lib_close"):
        close_details()
        st.rerun()


def close_details() -> None:
    """No embedding open: the details panel goes, and a reload (?emb=) does not bring it back."""
    st.session_state.pop("lib_selected", None)
    st.query_params.pop("emb", None)


def export_ui(emb, entry) -> None:
    """One download button per export format, side by side as wide as their labels (wrapping on a phone),
    what each is for in its help."""
    st.markdown("**Download**")
    image = _preview_image(entry)
    row = st.container(horizontal=True)
    for fmt, label in cards.EXPORT_LABELS.items():
        try:
            download = cards.export_download(emb, fmt, image=image)
        except context.user_errors() as exc:
            row.caption(f"{label}: {context.error_text(exc)}")
            continue
        row.download_button(
            label, download.data, file_name=download.file_name, mime=download.mime, key=f"dl_{fmt}",
            help=cards.EXPORT_HELP[fmt],
        )  # fmt: skip


def preview_ui(entry) -> bytes | None:
    """The bytes of `entry`'s thumbnail for st.image, None without one; a thumbnail that does not open is
    named in a small warning with the way out, and the card (and the rest of the page) goes on without it."""
    if entry.preview is None:
        return None
    try:
        return cards.preview_bytes(entry.preview)
    except cards.preview_errors() as exc:
        st.caption(f"⚠️ {cards.preview_problem(entry.preview, exc)}")
        return None


def _preview_image(entry):
    """The thumbnail as RGB for the A1111 PNG export, None for the plain card (a broken thumbnail too: the
    details panel above says so)."""
    if entry.preview is None:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(cards.preview_bytes(entry.preview))) as image:
            return image.convert("RGB")
    except cards.preview_errors():
        return None


def manage_ui(store, name: str) -> None:
    """Rename and delete (to the trash); a refused one says why under the field, and the page stays. Both
    buttons are drawn before either acts, so a refused rename leaves Delete on the page."""
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    new = c1.text_input("New name", key=f"lib_new_name_{name}", placeholder=name).strip()
    rename = c2.button("Rename", key="lib_rename")
    delete = c3.button("Delete", key="lib_delete", icon="🗑️")
    try:
        if rename and new:
            store.rename(name, new)
            st.session_state["lib_selected"] = new
            st.query_params["emb"] = new
            st.toast(f"Renamed <{name}> to <{new}>")
            st.rerun()
        if delete:
            store.delete(name)
            close_details()
            st.toast(f"Moved <{name}> to the trash: restore it below")
            st.rerun()
    except context.user_errors() as exc:
        st.error(context.error_text(exc))


def trash_ui(store) -> None:
    """Deleted embeddings, each with a Restore button."""
    trashed = list(dict.fromkeys(store.trashed()))
    if not trashed:
        st.caption("The trash is empty.")
    for name in trashed:
        c1, c2 = st.columns([4, 1])
        c1.markdown(literal(f"<{name}>"))
        if c2.button("Restore", key=f"restore_{name}"):
            try:
                restore(store, name)
            except context.user_errors() as exc:
                c1.error(literal(context.error_words(exc)))
                continue
            st.toast(literal(f"Restored <{name}>"))
            st.rerun()


def restore(store, name: str) -> None:
    """Bring `name` back from the trash; a stored name differing only in letter case is refused in the
    studio's words (the core's hint would rename that one, and then this restore is refused again)."""
    twin = store.case_twin(name)
    if twin is not None:
        raise ValueError(
            f"cannot restore <{name}>: the stored <{twin}> differs from it only in letter case, and prompts "
            f"read them as one token; rename or delete <{twin}> first (open it in the Library)"
        )
    store.restore(name)


FIT_ICONS = {"fits": "✅", "partial": "🟡", "no": "❌", "unknown": "❔", "unreadable": "⚠️"}


def doctor_ui(store, entries: list, skipped: list) -> None:
    """The doctor's verdict of each stored embedding against the sidebar's model (loads it once), and of
    each file in the library folder that the library skips (`skipped`: (path, reason) from `store.list`),
    with the reason: `tokensmith doctor` reports those too, and they are what a user asks about."""
    spec = context.model_spec()
    if not st.button(f"Check against the model `{spec}`", key="lib_doctor"):
        return
    from embeddings.doctor import diagnose

    with st.spinner("Loading the model…"):
        model = context.loaded_model(spec)
    for entry in entries:
        report = diagnose(entry.path, model.encoders, model_family=model.family, store_root=store.root)
        verdict_ui(f"<{entry.name}>", report)
    for path, reason in skipped:
        report = diagnose(path, model.encoders, model_family=model.family, store_root=store.root)
        reason = context.studio_text(reason.removeprefix(f"{path}: ").replace(str(path), path.name))
        verdict_ui(path.name, report, skipped=reason)


def verdict_ui(label: str, report, *, skipped: str | None = None) -> None:
    """One file's verdict: '✅ **<cat>** — fits this model, …', its warnings below; a file the library
    skips says so first, with the reason. Everything but the icon comes from the file: drawn `literal`."""
    from embeddings.doctorstore import SKIPPED_WARNING

    icon = FIT_ICONS.get(report.fit, "")
    verdict = context.studio_text(sentences(verdict_lines(report)), fields=context.DOCTOR_FIELDS)
    if skipped is not None:
        verdict = f"not in the library ({skipped}). {verdict}"
    st.markdown(f"{icon} **{literal(label)}** — {literal(verdict)}")
    for warning in report.warnings:
        if skipped is not None and warning.startswith(SKIPPED_WARNING):  # said above, with its ways out as
            continue  # buttons (the warning's are shell commands)
        st.caption(f"⚠️ {literal(context.studio_text(warning, fields=context.DOCTOR_FIELDS))}")


def verdict_lines(report) -> list[str]:
    """The doctor's sentences about the fit, without those that describe the file (its format, family,
    provenance and raw lineage: the card says those)."""
    from embeddings.doctor import describe

    if report.embedding is None:
        return report.lines
    return report.lines[len(describe(report.embedding)) :] or report.lines


def sentences(lines: list[str]) -> str:
    """The doctor's lines as one paragraph, each a sentence: 'this model is width 32', 'partial option: …'
    -> 'this model is width 32. partial option: …' (a line ending in punctuation keeps its own)."""
    lines = [line.strip() for line in lines if line.strip()]
    return " ".join(line if line.endswith((".", "!", "?", ":")) else f"{line}." for line in lines)


def widths_text(widths: dict[str, int]) -> str:
    """'width 64', or 'widths clip_l 768, clip_g 1280', for the details panel (not a Python dict)."""
    from embeddings.doctor import widths_text as text

    return text(widths) if len(widths) == 1 else f"widths {text(widths)}"


# --- the page ---

st.title("📚 Library")
try:
    store = context.store()
    libraryfiles.import_report_ui()
    problems: list = []
    others: list = []
    entries = store.list(problems=problems, others=others)  # a file that cannot be read is named, not hidden
    libraryfiles.problems_ui(store, problems)
    libraryfiles.others_ui(store, others)
    if not entries:
        st.info("The library is empty: train a concept on the Train page, or import embedding files below.")
    else:
        query, families = filter_ui(entries)
        shown = [e for e in entries if e.family in families and cards.matches(e, query)]
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        with c2:
            start, stop = page_ui(shown, (query, tuple(families)), st.query_params.get("emb"))
        on_page = f" (cards {start + 1}–{stop})" if stop - start < len(shown) else ""
        c1.caption(f"{len(shown)} of {len(entries)} embeddings{on_page} · store: `{store.root}`")
        gallery_ui(shown[start:stop])
        selected = st.session_state.get("lib_selected") or st.query_params.get("emb")
        listed = {e.name: e for e in entries}
        if selected in listed:
            st.divider()
            try:
                details_ui(store, selected)
            except context.user_errors() as exc:  # listed but does not load: a way out, and the page stays
                unloadable_ui(store, listed[selected], exc)
    if entries or problems:
        with st.expander("Doctor: do they fit the model?"):
            doctor_ui(store, shown if entries else [], problems)
    with st.expander("Import embeddings", expanded=not entries):
        libraryfiles.import_ui(store)
    with st.expander("Trash"):
        trash_ui(store)
except context.user_errors() as exc:
    st.error(context.error_text(exc))
