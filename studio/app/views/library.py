"""Library: the stored embeddings as a gallery; search, details, rename, delete/restore, import, export."""

from __future__ import annotations

import io

import streamlit as st

from studio.app import cards, context
from studio.app.cards import code, literal

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
                image = preview_ui(entry)
                if image is not None:
                    st.image(image, width="stretch")
                else:
                    st.markdown("### 🪙")
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
            st.image(image, width=256)
        st.markdown(f"**{literal(cards.card_line(entry))}**  \n{literal(widths_text(entry.widths))}")
        lineage = cards.lineage_text(entry.meta)
        if lineage:
            st.markdown(f"Lineage: {literal(lineage)}")
    with right:
        st.dataframe(
            {"key": list(entry.meta), "value": list(entry.meta.values())}, hide_index=True, height=240
        )
    export_ui(emb, entry)
    manage_ui(store, name)


def unloadable_ui(store, entry, exc: BaseException) -> None:
    """The details panel of a listed embedding that does not load (a corrupted file, or one changed or
    removed since the listing; a file under a name the store refuses is never listed, `problems_ui` offers
    its ways out): what is wrong, and the ways out, Move to the trash and Close; the rest of the page
    (Doctor, Import, Trash) stays."""
    name = entry.name
    st.subheader(f"<{name}>")
    st.error(literal(f"<{name}> cannot be opened: {context.error_text(exc)}"))
    c1, c2, _ = st.columns([1, 1, 3])
    if c1.button("Move to the trash", key="lib_trash_unloadable", icon="🗑️"):
        try:
            store.delete(name)
        except context.user_errors() as refused:
            st.error(
                f"{literal(context.error_text(refused))}. Move {code(entry.path.name)} out of the library "
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
    """One download button per export format."""
    st.markdown("**Download**")
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
        uploads = cards.read_uploads([(file.name, file.getvalue()) for file in files])
        problems = [context.studio_text(p) for p in uploads.problems]
        clashes = cards.name_clashes(uploads.found)
        if clashes:  # as `tokensmith import`: checked for every file before any is stored
            _report([], clashes + problems, [])
            return
        added, same = store_uploads(store, uploads.found, problems, overwrite=overwrite)
        if added:  # list them: the page lists the store before this section, so run it again
            st.session_state["lib_import_report"] = (added, problems, same)
            st.rerun()
        _report(added, problems, same)


def store_uploads(store, found: list, problems: list[str], *, overwrite: bool) -> tuple[list, list]:
    """Store each (upload, embedding); the names added and those already stored with identical vectors. What
    is refused is appended to `problems`, naming the upload."""
    added, same = [], []
    for source, emb in found:
        twin = store.case_twin(emb.name)
        if twin is not None:  # refused with Replace on too: <Cat> would replace a different <cat>
            problems.append(
                f"{source}: <{emb.name}> differs from the stored <{twin}> only in letter case, and prompts "
                f"read them as one token; rename or delete <{twin}> first"
            )
        elif store.exists(emb.name) and not overwrite:
            if store.holds(emb):  # the same vectors again: nothing to do, and nothing wrong
                same.append(emb.name)
            else:
                problems.append(f"{source}: {cards.name_taken_text(emb.name, REPLACE_LABEL)}")
        else:
            try:
                store.put(emb, overwrite=overwrite)
                added.append(emb.name)
            except context.user_errors() as exc:
                problems.append(f"{source}: {context.error_text(exc)}")
    return added, same


def import_report_ui() -> None:
    """What the last import added (and refused), shown once after the rerun that lists the new cards."""
    _report(*st.session_state.pop("lib_import_report", ([], [], [])))


def _report(added: list[str], problems: list[str], same: list[str]) -> None:
    """The import's outcome; a problem names an upload and quotes its file, so it is drawn `literal`."""
    if added:
        st.success(literal("Imported " + ", ".join(f"<{n}>" for n in added)))
    if same:
        names = ", ".join(f"<{n}>" for n in same)
        st.info(literal(f"Already in the library with identical vectors: {names}"))
    for problem in problems:
        st.error(literal(problem))


def problems_ui(store, problems: list) -> None:
    """A warning naming each stored file that cannot be read (as `tokensmith list` warns), and the ways out:
    Move to the trash; for a file copied in under a name the store refuses, Rename to a free valid one; for
    one of another tool's layout, Import it (the file is on the server: no upload of it could be asked for).
    Every button is drawn before any acts, so a refused rename leaves Move to the trash on the page."""
    from embeddings.names import is_valid_name

    for path, reason in problems:
        c1, c2 = st.columns([4, 1], vertical_alignment="center")
        c1.warning(context.problem_text(store, path, reason, on_library_page=True))
        name = path.stem
        valid = None if is_valid_name(name) else context.free_name(store, name)
        rename = valid is not None and c2.button(f"Rename to <{valid}>", key=f"lib_rename_stray_{name}")
        convert = (
            valid is None and other_layout(path) and c2.button("Import it", key=f"lib_import_stray_{name}")
        )
        trash = c2.button("Move to the trash", key=f"lib_trash_broken_{name}", icon="🗑️")
        try:
            if convert:
                stored = ", ".join(f"<{n}>" for n in import_stray(store, path))
                st.toast(f"Imported {code(path.name)} as {literal(stored)}; the file itself is in the trash")
                st.rerun()
            if rename:
                rename_stray(store, path, valid)
                st.toast(f"Renamed {code(path.name)} to {literal(f'<{valid}>')}")
                st.rerun()
            if trash:
                store.delete(name)
                st.toast(f"Moved {code(path.name)} to the trash")
                st.rerun()
        except context.user_errors() as exc:
            c1.error(literal(context.error_text(exc)))


def others_ui(store, others: list) -> None:
    """A note for each embedding file of another format in the store folder (`.pt`, `.bin`, an image that
    is not a thumbnail), which the library does not read, as `tokensmith list` notes them: converting one
    is an import."""
    from embeddings.text import shell_quote

    for path in others:
        st.caption(
            f"ℹ️ not read: {code(path.name)}: the library reads only .safetensors files; if it is an "
            "embedding, import it (upload it under Import embeddings below, or run "
            f"{code(f'tokensmith import {shell_quote(str(path))}')} on the studio's machine) to store a copy "
            "the library reads"
        )


def other_layout(path) -> bool:
    """Whether the skipped library file `path` holds another tool's layout (diffusers' {token: tensor}, an
    A1111 key) that an import converts, rather than being damaged."""
    from embeddings.canonical import is_canonical_layout, read_header
    from embeddings.errors import EmbeddingFormatError

    try:
        keys = [key for key in read_header(path) if key != "__metadata__"]
    except (EmbeddingFormatError, OSError):
        return False
    return bool(keys) and not is_canonical_layout(keys)


def import_stray(store, path) -> list[str]:
    """Convert `path`, a file of another layout in the library folder, as `tokensmith import PATH` does, then
    move it to the trash (restorable) unless the converted copy took its place (under its own name, as
    import's --force); the names stored. Refused, as an upload is, where a name is taken."""
    from embeddings.importing import import_sources

    stored, problems = [], []
    for _, emb in import_sources(path):
        if emb.name == path.stem:
            store.put(emb, overwrite=True)
            stored.append(emb.name)
        else:
            added, same = store_uploads(store, [(path.name, emb)], problems, overwrite=False)
            stored += added + same  # the same vectors stored already: this file is a spare copy
    if problems:
        raise ValueError("; ".join(problems))
    if path.stem not in stored:
        store.delete(path.stem)
    return stored


def rename_stray(store, path, valid: str) -> None:
    """Give the hand-copied file `path` the name `valid`; refused in the studio's words when `valid` was
    taken since the page was drawn (the core's advice is to remove it, and this row has no name field)."""
    if store.exists(valid):
        raise ValueError(
            f"cannot rename {path.name} to <{valid}>: <{valid}> already exists: delete <{valid}> first, or "
            "move this file to the trash"
        )
    store.rename(path.stem, valid)


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
                c1.error(literal(context.error_text(exc)))
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
    icon = FIT_ICONS.get(report.fit, "")
    verdict = context.studio_text(sentences(verdict_lines(report)), fields=context.GENERATE_FIELDS)
    if skipped is not None:
        verdict = f"not in the library ({skipped}). {verdict}"
    st.markdown(f"{icon} **{literal(label)}** — {literal(verdict)}")
    for warning in report.warnings:
        st.caption(f"⚠️ {literal(context.studio_text(warning, fields=context.GENERATE_FIELDS))}")


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
    import_report_ui()
    problems: list = []
    others: list = []
    entries = store.list(problems=problems, others=others)  # a file that cannot be read is named, not hidden
    problems_ui(store, problems)
    others_ui(store, others)
    if not entries:
        st.info("The library is empty: train a concept on the Train page, or import embedding files below.")
    else:
        query, families = filter_ui(entries)
        shown = [e for e in entries if e.family in families and cards.matches(e, query)]
        st.caption(f"{len(shown)} of {len(entries)} embeddings · store: `{store.root}`")
        gallery_ui(shown)
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
        import_ui(store)
    with st.expander("Trash"):
        trash_ui(store)
except context.user_errors() as exc:
    st.error(context.error_text(exc))
