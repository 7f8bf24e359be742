"""Library: the stored embeddings as a gallery; search, details, rename, delete/restore, import, export."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from studio.app import cards, context

COLUMNS = 4
IMPORT_TYPES = ["safetensors", "pt", "bin", "ckpt", "png", "webp"]
REPLACE_LABEL = "Replace embeddings of the same name"


# --- widgets ---


def filter_ui(entries: list) -> tuple[str, list[str]]:
    """Search text and the families to show."""
    c1, c2 = st.columns([3, 2])
    query = c1.text_input("Search", key="lib_query", placeholder="name, init word, lineage…")
    families = sorted({e.family for e in entries})
    chosen = c2.multiselect("Families", families, default=families, key=f"lib_families_{'-'.join(families)}")
    return query, chosen


def gallery_ui(entries: list) -> None:
    """Cards with preview, family, vectors, steps and lineage; 'Open' selects one for the details panel."""
    for start in range(0, len(entries), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, entry in zip(cols, entries[start : start + COLUMNS], strict=False):
            with col.container(border=True):
                if entry.preview is not None:
                    st.image(entry.preview.read_bytes(), width="stretch")
                else:
                    st.markdown("### 🪙")
                st.markdown(f"**&lt;{entry.name}&gt;**")
                st.caption(cards.card_line(entry))
                lineage = cards.lineage_text(entry.meta)
                if lineage:
                    st.caption(lineage)
                if st.button("Open", key=f"open_{entry.name}"):
                    st.session_state["lib_selected"] = entry.name
                    st.query_params["emb"] = entry.name


def details_ui(store, name: str) -> None:
    """Everything about one embedding and what can be done with it."""
    entry = store.entry(name)
    st.subheader(f"<{name}>")
    left, right = st.columns([2, 3])
    with left:
        if entry.preview is not None:
            st.image(entry.preview.read_bytes(), width=256)
        st.markdown(f"**{cards.card_line(entry)}**  \nwidths: {entry.widths}")
        lineage = cards.lineage_text(entry.meta)
        if lineage:
            st.markdown(f"Lineage: {lineage}")
    with right:
        st.dataframe(
            {"key": list(entry.meta), "value": list(entry.meta.values())}, hide_index=True, height=240
        )
    export_ui(store, entry)
    manage_ui(store, name)


def export_ui(store, entry) -> None:
    """One download button per export format."""
    st.markdown("**Download**")
    emb = store.get(entry.name)
    image = _preview_image(entry)
    cols = st.columns(len(cards.EXPORT_LABELS))
    for col, (fmt, label) in zip(cols, cards.EXPORT_LABELS.items(), strict=True):
        try:
            download = cards.export_download(emb, fmt, image=image)
        except context.user_errors() as exc:
            col.caption(f"{label}: {context.error_text(exc)}")
            continue
        col.download_button(
            label, download.data, file_name=download.file_name, mime=download.mime, key=f"dl_{fmt}"
        )


def _preview_image(entry):
    if entry.preview is None:
        return None
    from PIL import Image

    with Image.open(entry.preview) as image:
        return image.convert("RGB")


def manage_ui(store, name: str) -> None:
    """Rename and delete (to the trash); a refused one says why under the field, and the page stays."""
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    new = c1.text_input("New name", key=f"lib_new_name_{name}", placeholder=name).strip()
    try:
        if c2.button("Rename", key="lib_rename") and new:
            store.rename(name, new)
            st.session_state["lib_selected"] = new
            st.query_params["emb"] = new
            st.toast(f"Renamed <{name}> to <{new}>")
            st.rerun()
        if c3.button("Delete", key="lib_delete", icon="🗑️"):
            store.delete(name)
            st.session_state.pop("lib_selected", None)
            st.query_params.pop("emb", None)
            st.toast(f"Moved <{name}> to the trash: restore it below")
            st.rerun()
    except context.user_errors() as exc:
        st.error(context.error_text(exc))


def import_ui(store) -> None:
    """Upload embedding files of any format the core reads; each becomes a store entry."""
    files = st.file_uploader(
        "Embedding files (our .safetensors, diffusers, A1111 .pt/.bin/PNG, kohya, SDXL pairs)",
        type=IMPORT_TYPES,
        accept_multiple_files=True,
        key="lib_import_files",
    )
    overwrite = st.toggle(REPLACE_LABEL, key="lib_import_overwrite")
    if st.button("Import", key="lib_import", disabled=not files):
        from embeddings.importing import import_path

        added, problems, same = [], [], []
        with tempfile.TemporaryDirectory(prefix="tokensmith-import-") as tmp:
            for file in files:
                path = Path(tmp) / Path(file.name).name
                path.write_bytes(file.getvalue())
            skipped: list = []
            for emb in import_path(Path(tmp), skipped=skipped):
                if store.exists(emb.name) and not overwrite:
                    if store.holds(emb):  # the same vectors again: nothing to do, and nothing wrong
                        same.append(emb.name)
                    else:
                        problems.append(cards.name_taken_text(emb.name, REPLACE_LABEL))
                    continue
                try:
                    store.put(emb, overwrite=overwrite)
                    added.append(emb.name)
                except context.user_errors() as exc:
                    problems.append(context.error_text(exc))
            problems += [f"{p.name}: {reason}" for p, reason in skipped]
        if added:  # list them: the page lists the store before this section, so run it again
            st.session_state["lib_import_report"] = (added, problems, same)
            st.rerun()
        _report(added, problems, same)


def import_report_ui() -> None:
    """What the last import added (and refused), shown once after the rerun that lists the new cards."""
    _report(*st.session_state.pop("lib_import_report", ([], [], [])))


def _report(added: list[str], problems: list[str], same: list[str]) -> None:
    if added:
        st.success("Imported " + ", ".join(f"<{n}>" for n in added))
    if same:
        st.info("Already in the library with identical vectors: " + ", ".join(f"<{n}>" for n in same))
    for problem in problems:
        st.error(problem)


def problems_ui(store, problems: list) -> None:
    """A warning naming each stored file that cannot be read (as `tokensmith list` warns), and a way out."""
    for path, reason in problems:
        c1, c2 = st.columns([4, 1], vertical_alignment="center")
        c1.warning(cards.skipped_text(path, reason))
        name = path.stem
        if c2.button("Move to the trash", key=f"lib_trash_broken_{name}", icon="🗑️"):
            try:
                store.delete(name)
            except context.user_errors() as exc:
                c1.error(context.error_text(exc))
                continue
            st.toast(f"Moved {path.name} to the trash")
            st.rerun()


def trash_ui(store) -> None:
    """Deleted embeddings, each with a Restore button."""
    trashed = list(dict.fromkeys(store.trashed()))
    if not trashed:
        st.caption("The trash is empty.")
    for name in trashed:
        c1, c2 = st.columns([4, 1])
        c1.markdown(f"<{name}>")
        if c2.button("Restore", key=f"restore_{name}"):
            store.restore(name)
            st.toast(f"Restored <{name}>")
            st.rerun()


FIT_ICONS = {"fits": "✅", "partial": "🟡", "no": "❌", "unknown": "❔", "unreadable": "⚠️"}


def doctor_ui(entries: list) -> None:
    """The doctor's verdict of each stored embedding against the sidebar's model (loads it once)."""
    spec = context.model_spec()
    if not st.button(f"Check against the model `{spec}`", key="lib_doctor"):
        return
    from embeddings.doctor import diagnose

    with st.spinner("Loading the model…"):
        encoders = context.loaded_model(spec).encoders
    for entry in entries:
        report = diagnose(entry.path, encoders)
        icon = FIT_ICONS.get(report.fit, "")
        st.markdown(
            f"{icon} **<{entry.name}>** — {report.fit}: " + " ".join(report.lines[2:] or report.lines)
        )
        for warning in report.warnings:
            st.caption(f"⚠️ {warning}")


# --- the page ---

st.title("📚 Library")
try:
    store = context.store()
    import_report_ui()
    problems: list = []
    entries = store.list(problems=problems)  # a file that cannot be read is named, not hidden
    problems_ui(store, problems)
    if not entries:
        st.info("The library is empty: train a concept on the Train page, or import embedding files below.")
    else:
        query, families = filter_ui(entries)
        shown = [e for e in entries if e.family in families and cards.matches(e, query)]
        st.caption(f"{len(shown)} of {len(entries)} embeddings · store: `{store.root}`")
        gallery_ui(shown)
        selected = st.session_state.get("lib_selected") or st.query_params.get("emb")
        if selected in {e.name for e in entries}:
            st.divider()
            details_ui(store, selected)
        with st.expander("Doctor: do they fit the model?"):
            doctor_ui(shown)
    with st.expander("Import embeddings", expanded=not entries):
        import_ui(store)
    with st.expander("Trash"):
        trash_ui(store)
except context.user_errors() as exc:
    st.error(context.error_text(exc))
