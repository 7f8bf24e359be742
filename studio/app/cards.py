"""What the Library shows about a stored embedding, as plain values: its card line, lineage, search match,
the bytes of each export format, and the embeddings a batch of uploaded files holds (no Streamlit here, so
the page stays a thin script)."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPORT_LABELS = {
    "canonical": "tokensmith / A1111 / ComfyUI (.safetensors)",
    "diffusers": "diffusers load_textual_inversion",
    "a1111-pt": "A1111 .pt",
    "a1111-png": "A1111 PNG (embedding inside an image)",
}


@dataclass(frozen=True)
class Download:
    """One file for st.download_button."""

    file_name: str
    data: bytes
    mime: str


def card_line(entry: Any) -> str:
    """'sd1 · 2 vectors · 150 steps' from a StoreEntry's header facts."""
    parts = [entry.family, f"{entry.num_vectors} vector{'s' if entry.num_vectors != 1 else ''}"]
    if entry.meta.get("steps"):
        parts.append(f"{entry.meta['steps']} steps")
    return " · ".join(parts)


def skipped_text(path: Path, reason: str, *, on_library_page: bool = False) -> str:
    """The warning for a stored file that cannot be read, worded as `tokensmith list` warns, with what the
    studio offers: 'skipped `broken.safetensors`: <reason>. Move it to the trash …, or replace the file …'
    (the reason's own copy of the path left out: the file is named once)."""
    reason = reason.removeprefix(f"{path}: ").replace(str(path), path.name)
    where = "" if on_library_page else " (on the Library page)"
    return (
        f"skipped `{path.name}`: {reason}. Move it to the trash{where}, or replace the file with a good "
        "copy, to clear this warning."
    )


def name_taken_text(name: str, toggle: str) -> str:
    """The studio's words for a name already in the library: its Replace `toggle`, where the core's message
    names the CLI's --force."""
    return f"an embedding named '{name}' already exists: choose another name, or turn on “{toggle}”"


def lineage_text(meta: dict[str, str]) -> str:
    """How an embedding came to be: '0.6 × <cat> + 0.4 × "dog" (slerp)', 'trained from "cat"', or ''."""
    raw = meta.get("parent")
    if raw:
        try:
            parent = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        return _parent_text(parent)
    if meta.get("init"):
        return f'trained from "{meta["init"]}"'
    if meta.get("source_file"):
        return f"imported from {meta['source_file']}"
    return ""


def _parent_text(parent: Any) -> str:
    if not isinstance(parent, dict):
        return json.dumps(parent)
    parts = parent.get("operands")
    if isinstance(parts, list) and parts:
        terms = []
        for part in parts:
            if not isinstance(part, dict):
                terms.append(str(part))
                continue
            label = part.get("name") or "?"
            label = f"<{label}>" if part.get("kind", "embedding") == "embedding" else f'"{label}"'
            weight = part.get("weight")
            terms.append(f"{weight:g} × {label}" if isinstance(weight, int | float) else label)
        method = parent.get("method") or ""
        extra = ", keep norm" if parent.get("keep_norm") else ""
        return " + ".join(terms) + (f" ({method}{extra})" if method else "")
    return json.dumps(parent, sort_keys=True)


def matches(entry: Any, query: str) -> bool:
    """Case-insensitive search over the name, family, init text and lineage."""
    query = query.strip().lower()
    if not query:
        return True
    haystack = " ".join([entry.name, entry.family, entry.meta.get("init", ""), lineage_text(entry.meta)])
    return all(word in haystack.lower() for word in query.split())


def export_download(emb: Any, fmt: str, *, image: Any = None) -> Download:
    """The export of `emb` in `fmt` as one downloadable file (a .zip when the format writes several)."""
    from embeddings.exporting import export

    suffix = {
        "canonical": ".safetensors",
        "diffusers": ".safetensors",
        "a1111-pt": ".pt",
        "a1111-png": ".png",
    }
    with tempfile.TemporaryDirectory(prefix="tokensmith-export-") as tmp:
        target = Path(tmp) / f"{emb.name}{suffix[fmt]}"
        if fmt == "diffusers" and len(emb.vectors) > 1:
            target = Path(tmp) / emb.name  # the SDXL pair goes into a folder
        written = export(emb, fmt, target, image=image)
        if len(written) == 1:
            path = written[0]
            mime = "image/png" if path.suffix == ".png" else "application/octet-stream"
            name = path.name if fmt != "diffusers" else f"{emb.name}.diffusers{path.suffix}"
            return Download(name, path.read_bytes(), mime)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in written:
                archive.write(path, arcname=f"{emb.name}/{path.name}")
        return Download(f"{emb.name}.{fmt}.zip", buffer.getvalue(), "application/zip")


# --- uploads ---


@dataclass
class Uploads:
    """What a batch of uploaded files holds: each embedding with the upload(s) it came from, and the files
    that are not imported (one message each: no embedding, a lone half of an SDXL pair, ...)."""

    found: list[tuple[str, Any]] = field(default_factory=list)  # (file name(s), Embedding)
    problems: list[str] = field(default_factory=list)


def read_uploads(files: Sequence[tuple[str, bytes]]) -> Uploads:
    """The embeddings in uploaded (file name, bytes), each file read on its own as `tokensmith import FILE`
    reads it, so two uploads of one name (every diffusers download is `learned_embeds.safetensors`) never
    replace each other, and a `*.preview.png` or `.hidden.pt` picked by hand is read. The two halves of a
    diffusers SDXL pair uploaded together still make one embedding; a half without its partner is not
    stored (alone it is not the SDXL embedding). Messages name the uploads, never the temporary folder they
    are read from, and uploads of one file name by their place and size; an embedding uploaded twice is kept
    once (`import`'s rule)."""
    from embeddings.importing import distinct_sources, lone_pair_half

    out = Uploads()
    labels = upload_labels(files)
    found: list[tuple[Path, Any]] = []  # (the temporary file or pair folder, embedding)
    uploaded: dict[Path, str] = {}  # temporary path -> the upload(s) it holds
    unpaired: list[str] = []  # halves that could not be told apart: one message for them all
    with tempfile.TemporaryDirectory(prefix="tokensmith-import-") as tmp:
        groups, unmatched = _upload_groups(files, lambda i: _token_of(files[i], Path(tmp) / f"probe-{i}"))
        for g, group in enumerate(groups):
            folder = Path(tmp) / str(g)  # one folder per upload (or pair): equal names cannot clash
            folder.mkdir()
            shown = {folder / _file_name(files[i][0]): labels[i] for i in group}
            for path, i in zip(shown, group, strict=True):
                path.write_bytes(files[i][1])
            uploaded |= shown
            if len(group) > 1:
                shown[folder] = uploaded[folder] = " + ".join(labels[i] for i in group)
            elif group[0] in unmatched:
                unpaired.append(labels[group[0]])
                continue
            elif note := lone_pair_half(next(iter(shown))):
                out.problems.append(f"{labels[group[0]]}: not imported: {_without_paths(note, shown)}")
                continue
            found += _read_group(folder if len(group) > 1 else next(iter(shown)), shown, out)
        distinct = distinct_sources(found)  # resolves the paths: inside the folder's lifetime
    if unpaired:
        out.problems.append(
            f"{', '.join(unpaired)}: not imported: these are halves of a diffusers SDXL pair, and which "
            "learned_embeds goes with which learned_embeds_2 could not be told: upload an SDXL pair "
            "(learned_embeds + learned_embeds_2) on its own, apart from other diffusers files"
        )
    out.found = [(uploaded.get(source, source.name), emb) for source, emb in distinct]
    return out


def upload_labels(files: Sequence[tuple[str, bytes]]) -> list[str]:
    """How messages name each upload: its file name, and where several uploads share one (a browser sends
    no folders), their place in the list and size: 'redtok.safetensors (2nd upload, 930 B)'."""
    names = [_file_name(name) for name, _ in files]
    return [
        f"{name} ({_ordinal(i + 1)} upload, {_size_text(len(data))})" if names.count(name) > 1 else name
        for i, (name, (_, data)) in enumerate(zip(names, files, strict=True))
    ]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _size_text(size: int) -> str:
    """'928 B', '1.2 KB', '3.4 MB'."""
    if size < 1000:
        return f"{size} B"
    return f"{size / 1000:.1f} KB" if size < 1000**2 else f"{size / 1000**2:.1f} MB"


def _file_name(name: str) -> str:
    """The upload's own file name (a browser sends no folders; a name that is only folders gets one)."""
    return Path(name).name or "upload"


def _token_of(file: tuple[str, bytes], folder: Path) -> str | None:
    """The token a diffusers file holds (what pairs an SDXL pair's halves), None if it does not read."""
    from embeddings.errors import TokensmithError
    from embeddings.importing import import_file

    folder.mkdir(exist_ok=True)
    path = folder / _file_name(file[0])
    path.write_bytes(file[1])
    try:
        return import_file(path).meta.get("token")
    except (TokensmithError, ValueError, OSError):
        return None


def _upload_groups(
    files: Sequence[tuple[str, bytes]], token_of: Callable[[int], str | None]
) -> tuple[list[list[int]], set[int]]:
    """The uploads' indices, one per group, except the halves of a diffusers SDXL pair, read together: the
    one `learned_embeds_2` of a kind with its one `learned_embeds`, or among several of those the one whose
    token (`token_of`) is its own. Also the indices of the pair files that could not be told apart (several
    `learned_embeds_2`, or several `learned_embeds` that hold its token, or none that does)."""
    from embeddings.formats.diffusers import PAIR_NAMES, PAIR_NAMES_BIN

    groups: list[list[int]] = []
    unmatched: set[int] = set()
    for first_name, second_name in (PAIR_NAMES, PAIR_NAMES_BIN):
        firsts = [i for i, (n, _) in enumerate(files) if _file_name(n) == first_name]
        seconds = [i for i, (n, _) in enumerate(files) if _file_name(n) == second_name]
        if len(seconds) == 1 and len(firsts) == 1:  # as a folder pairs them (the import checks the tokens)
            groups.append([firsts[0], seconds[0]])
            continue
        if not (firsts and seconds):
            continue
        tokens = {token_of(i) for i in seconds} - {None}
        matching = [i for i in firsts if token_of(i) in tokens]
        if len(seconds) == 1 and len(matching) == 1:
            groups.append([matching[0], seconds[0]])
        else:  # the other learned_embeds are ordinary diffusers files, read on their own
            unmatched.update(seconds + matching)
    paired = {i for group in groups for i in group}
    return groups + [[i] for i in range(len(files)) if i not in paired], unmatched


def _read_group(path: Path, shown: dict[Path, str], out: Uploads) -> list[tuple[Path, Any]]:
    """The (source, embedding) pairs of `path` (one uploaded file, or the folder of an uploaded pair); what
    it does not hold goes into `out.problems`, naming the upload."""
    from embeddings.errors import TokensmithError
    from embeddings.importing import import_sources

    skipped: list[tuple[Path, str]] = []
    try:
        sources = import_sources(path, skipped=skipped)
    except (TokensmithError, ValueError, OSError) as exc:  # a single file raises what a folder skips
        sources, skipped = [], [(path, str(exc))]
    for source, reason in skipped:
        name = shown.get(source, source.name)
        out.problems.append(f"{name}: {_without_paths(reason, shown).removeprefix(f'{name}: ')}")
    return [  # the pair's embedding names its uploads, not the temporary folder
        (source, emb.with_meta(source_file=shown[path]) if source == path and path.is_dir() else emb)
        for source, emb in sources
    ]


def _without_paths(text: str, shown: dict[Path, str]) -> str:
    """`text` with each temporary path replaced by the upload's name (the longest paths first)."""
    for path in sorted(shown, key=lambda p: len(str(p)), reverse=True):
        text = text.replace(str(path), shown[path])
    return text


def name_clashes(found: Sequence[tuple[str, Any]]) -> list[str]:
    """One message per name that several uploads hold, naming the files (the core's `name_clashes`, the
    rule of `tokensmith import`, which then stores none of them), with the studio's way out."""
    from embeddings.importing import name_clashes as clashes_of

    return [
        f"{clash}. Nothing was imported: import one of them, rename it in the Library, then import the next"
        for clash in clashes_of(found)
    ]
