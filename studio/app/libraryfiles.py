"""Files on their way into the Library: uploads to import, and the files in the library folder that the
listing skips (copied in under a name the store refuses, of another tool's layout, unreadable, or of another
format), each with its ways out: rename, import, the trash. The Library page draws these sections."""

from __future__ import annotations

import streamlit as st

from studio.app import cards, context, embedding_uploads
from studio.app.cards import code, literal

IMPORT_TYPES = ["safetensors", "pt", "bin", "ckpt", "png", "webp"]
REPLACE_LABEL = "Replace stored embeddings of the same name"  # as Train and Blend say it, for many


# --- uploads ---


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
        uploads = embedding_uploads.read_uploads([(file.name, file.getvalue()) for file in files])
        problems = [context.studio_text(p) for p in uploads.problems]
        clashes = embedding_uploads.name_clashes(uploads.found)
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
    is refused is appended to `problems`, naming the upload. The uploads hold no two names that differ only
    in letter case (`name_clashes`), so one scan of the store serves every upload's check, and one batch
    stores them."""
    added, same = [], []
    folded = store.folded_names()
    with store.batch() as batch:
        for source, emb in found:
            twin = store.case_twin(emb.name, folded=folded)
            if twin is not None:  # refused with Replace on too: <Cat> would replace a different <cat>
                problems.append(_twin_text(source, emb.name, twin))
            elif store.exists(emb.name) and not overwrite:
                if store.holds(emb):  # the same vectors again: nothing to do, and nothing wrong
                    same.append(emb.name)
                else:
                    problems.append(f"{source}: {cards.name_taken_text(emb.name, REPLACE_LABEL)}")
            else:
                try:
                    batch.put(emb, overwrite=overwrite)
                    added.append(emb.name)
                except context.user_errors() as exc:
                    problems.append(f"{source}: {context.error_words(exc)}")
    return added, same


def _twin_text(source: str, name: str, twin: str) -> str:
    return (
        f"{source}: <{name}> differs from the stored <{twin}> only in letter case, and prompts read them as "
        f"one token; rename or delete <{twin}> first"
    )


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


# --- files in the library folder that it skips ---


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
                names = import_stray(store, path)
                stored = ", ".join(f"<{n}>" for n in names)
                where = (  # under its own name the copy took the file's place (as import --force does)
                    "the copy replaced the file" if path.stem in names else "the file itself is in the trash"
                )
                st.toast(f"Imported {code(path.name)} as {literal(stored)}; {where}")
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
            c1.error(literal(context.error_words(exc)))


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
