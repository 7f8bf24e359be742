"""What the Library shows about a stored embedding, as plain values: its card line, lineage, search match,
the bytes of each export format and of its thumbnail, and the embeddings a batch of uploaded files holds (no
Streamlit here, so the page stays a thin script). Text that comes from a file goes through `literal` before
a page draws it as Markdown."""

from __future__ import annotations

import io
import json
import re
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


# Every ASCII punctuation mark: CommonMark lets each be backslash-escaped, and escaped, none starts a link, an
# image, HTML, emphasis, a heading or (Streamlit's) LaTeX.
MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# What Streamlit's GFM autolinks find in text *after* the escapes are read (remark-gfm looks for
# `https?://`, `www.` and `user@host` in the unescaped text): a word joiner (U+2060, invisible) after
# `http`, `www` and `@` keeps a URL or an address in a file's metadata from becoming a live link.
AUTOLINK_STARTS = re.compile(r"(?i)(http|www|@)")
WORD_JOINER = "\u2060"


@dataclass(frozen=True)
class Download:
    """One file for st.download_button."""

    file_name: str
    data: bytes
    mime: str


def literal(text: str) -> str:
    """`text` from a file (its name, or a value of its metadata) for st.markdown, st.caption, st.warning and
    the like, shown as written and never as Markdown: '![t](http://x/y.png)' draws those characters, not an
    image, '[click](https://x)' no link. Line breaks become spaces (a value is one line of a card)."""
    text = " ".join(str(text).splitlines())
    return AUTOLINK_STARTS.sub(rf"\1{WORD_JOINER}", MARKDOWN_PUNCTUATION.sub(r"\\\1", text))


def code(text: str) -> str:
    """`text` from a file (a file name) as a Markdown code span, which nothing inside can end early or make
    live: the fence is one backtick longer than any run in it, and line breaks are spaces
    ('x`y.pt' -> '``x`y.pt``')."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def card_line(entry: Any) -> str:
    """'sd1 · 2 vectors · 150 steps' from a StoreEntry's header facts (plain text: `literal` it to draw)."""
    parts = [entry.family, f"{entry.num_vectors} vector{'s' if entry.num_vectors != 1 else ''}"]
    if entry.meta.get("steps"):
        parts.append(f"{entry.meta['steps']} steps")
    return " · ".join(parts)


def skipped_text(path: Path, reason: str, *, on_library_page: bool = False) -> str:
    """The warning (Markdown: the file's name a `code` span, the reason `literal`) for a stored file that
    cannot be read, worded as `tokensmith list` warns, with what the studio offers: 'skipped
    `broken.safetensors`: <reason>. Move it to the trash …, or replace the file …' (the reason's own copy of
    the path left out: the file is named once)."""
    reason = reason.removeprefix(f"{path}: ").replace(str(path), path.name)
    where = "" if on_library_page else " (on the Library page)"
    return (
        f"skipped {code(path.name)}: {literal(reason)}. Move it to the trash{where}, or replace the file "
        "with a good copy, to clear this warning."
    )


def preview_bytes(path: Path) -> bytes:
    """The bytes of a stored thumbnail, checked to decode as an image first (st.image of bytes that do not
    raises PIL's error naming an in-memory buffer, and takes the page with it). Raises OSError (PIL's
    UnidentifiedImageError, a truncated file), ValueError or SyntaxError (a damaged chunk), or PIL's
    DecompressionBombError (an image too large to open safely): PREVIEW_ERRORS."""
    from PIL import Image

    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
    return data


def preview_errors() -> tuple[type[BaseException], ...]:
    """What `preview_bytes` raises for a thumbnail that is not a good image (PIL imported lazily)."""
    from PIL import Image

    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def preview_problem(path: Path, exc: BaseException) -> str:
    """The warning (Markdown) for a thumbnail that does not open, naming the file and the way out: 'the
    thumbnail red.preview.png is not a readable image: delete or replace that file in …'."""
    from PIL import Image

    too_large = isinstance(exc, Image.DecompressionBombError)
    what = "too large to open safely" if too_large else "not a readable image"
    return (
        f"the thumbnail {code(path.name)} is {what}: delete it, or replace it with a good image, in the "
        f"library folder {code(str(path.parent))} (the embedding itself is not affected)"
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
            shown = {folder / written_name(files[i][0]): labels[i] for i in group}
            try:
                for path, i in zip(shown, group, strict=True):
                    path.write_bytes(files[i][1])
            except OSError as exc:  # e.g. a full temporary disk: this upload is not read, the others are
                problem = _without_paths(str(exc), shown)
                out.problems.append(f"{' + '.join(shown.values())}: not imported: {problem}")
                continue
            uploaded |= shown
            if len(group) > 1:
                shown[folder] = uploaded[folder] = " + ".join(labels[i] for i in group)
            elif group[0] in unmatched:
                unpaired.append(labels[group[0]])
                continue
            elif note := lone_pair_half(next(iter(shown))):
                out.problems.append(f"{labels[group[0]]}: not imported: {_without_paths(note, shown)}")
                continue
            read = _read_group(folder if len(group) > 1 else next(iter(shown)), shown, out)
            if len(group) == 1:  # named from the file written: the upload's own name comes back
                read = [(source, _as_uploaded(emb, source, files[group[0]][0])) for source, emb in read]
            found += read
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


def written_name(name: str) -> str:
    """The name an upload is written under to be read: its stem as the store name an import makes of it
    (`safe_name`, which the importer applies to a name taken from the stem anyway), and its suffix if an
    importer reads it ('My Cat (1).pt' -> 'My-Cat-1.pt'). The SDXL pair's names stay as they are: they are
    what pairs the halves. So a name the filesystem cannot hold (over 255 bytes, '..', a NUL byte, a
    separator) is never a path, and the messages keep the upload's own name (`upload_labels`)."""
    from embeddings.formats.diffusers import PAIR_NAMES, PAIR_NAMES_BIN
    from embeddings.names import safe_name

    name = _file_name(name)
    if name in PAIR_NAMES + PAIR_NAMES_BIN:
        return name
    stem, suffix = _split_suffix(name)
    return safe_name(stem) + suffix


def _split_suffix(name: str) -> tuple[str, str]:
    """('My Cat', '.pt') for 'My Cat.pt'; (name, '') where the suffix is none an importer reads."""
    from embeddings.importing import SUFFIXES

    suffix = Path(name).suffix
    if suffix.lower() in SUFFIXES and len(name) > len(suffix):
        return name[: -len(suffix)], suffix
    return name, ""


def _as_uploaded(emb: Any, written: Path, name: str) -> Any:
    """`emb` read from the upload `name` written as `written`, with the facts an import of the file itself
    records: the upload's file name as `source_file`, and its stem as `source_name` where the embedding's
    name came from the stem and an import changes it."""
    name = _file_name(name)
    stem = _split_suffix(name)[0]
    restored = {}
    if emb.meta.get("source_file") == written.name:
        restored["source_file"] = name
    if emb.name == _split_suffix(written.name)[0] != stem and not emb.meta.get("source_name"):
        restored["source_name"] = stem
    return emb.with_meta(**restored) if restored else emb


def _token_of(file: tuple[str, bytes], folder: Path) -> str | None:
    """The token a diffusers file holds (what pairs an SDXL pair's halves), None if it does not read."""
    from embeddings.errors import TokensmithError
    from embeddings.importing import import_file

    folder.mkdir(exist_ok=True)
    path = folder / written_name(file[0])
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
