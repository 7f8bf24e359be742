"""What the Library shows about a stored embedding, as plain values: its card line, lineage, search match,
and the bytes of each export format and of its thumbnail (no Streamlit here, so the page stays a thin
script; what uploaded files hold is `embedding_uploads`). Text that comes from a file goes through `literal`
before a page draws it as Markdown."""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

# Short, so the buttons fit side by side; what each is for is their help
EXPORT_LABELS = {
    "canonical": ".safetensors (A1111, ComfyUI)",
    "diffusers": "diffusers",
    "a1111-pt": "A1111 .pt",
    "a1111-png": "A1111 PNG",
}
EXPORT_HELP = {
    "canonical": "The stored file as it is: A1111, ComfyUI, kohya and InvokeAI read it (and tokensmith).",
    "diffusers": "For diffusers' load_textual_inversion ({token: tensor}); an SDXL embedding downloads as a "
    ".zip of its two files.",
    "a1111-pt": "AUTOMATIC1111's pickled .pt (string_to_param), for its embeddings folder.",
    "a1111-png": "An image that AUTOMATIC1111 reads as the embedding: the thumbnail with the vectors inside.",
}
CARD_SIDE = 160  # a card's picture: the preview's first tile enlarged (nearest), narrower than a card
DETAILS_SIDE = 512  # the preview strip in the details panel: a 256 px strip of 32 px tiles at twice its size
# Header values that hold JSON: the raw metadata shows them as structures, not one line of text
JSON_META = ("metrics", "trainer", "parent")


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


def inert(text: str) -> str:
    """A message that may quote a file's words (an error naming its metadata), for st.error and the like:
    its own Markdown (`code`, **bold**) still reads, but no link, image or HTML tag can be made of it: every
    bracket is escaped (a link and an image need one), a `<` that opens a tag with attributes too (`<cat>`,
    a token, stays), and URLs and addresses are kept from autolinking as in `literal`."""
    parts = re.split(r"((`+).*?\2)", str(text))  # code spans (kept as they are: nothing in one is live)
    for i in range(0, len(parts), 3):
        part = re.sub(r"([\[\]])", r"\\\1", parts[i])
        part = re.sub(r"<(?=[A-Za-z/!?][^<>]*[\s=\"'/])", r"\\<", part)
        parts[i] = AUTOLINK_STARTS.sub(rf"\1{WORD_JOINER}", part)
    return "".join(part for i, part in enumerate(parts) if i % 3 != 2)


def code(text: str) -> str:
    """`text` from a file (a file name) as a Markdown code span, which nothing inside can end early or make
    live: the fence is one backtick longer than any run in it, and line breaks are spaces
    ('x`y.pt' -> '``x`y.pt``')."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def family_words(family: str) -> str:
    """A family as a label begins: 'SD 1.x', 'SDXL', 'The demo world', 'Width 32' (family_title's words)."""
    from embeddings import family_title

    title = family_title(family)
    return title[:1].upper() + title[1:]


def card_line(entry: Any) -> str:
    """'SD 1.x · 2 vectors · 150 steps' from a StoreEntry's header facts, the family in the words errors use
    (plain text: `literal` it to draw)."""
    parts = [family_words(entry.family), f"{entry.num_vectors} vector{'s' if entry.num_vectors != 1 else ''}"]
    if entry.meta.get("steps"):
        parts.append(f"{entry.meta['steps']} steps")
    return " · ".join(parts)


def details_rows(entry: Any) -> dict[str, str]:
    """What the details panel lists about a StoreEntry, labelled for people (plain text: `literal` each
    value to draw): the family in words, where it came from, base model, validation loss, creation time.
    The header as stored (snake_case keys, JSON) is the panel's raw metadata."""
    from embeddings import family_title
    from embeddings.doctor import format_title

    meta = entry.meta
    rows = {"Model family": family_title(entry.family)}  # vectors, widths and steps: the card line beside it
    if meta.get("parent"):
        rows["Blended from"] = lineage_text(meta)
    elif meta.get("init"):
        rows["Trained from"] = f'"{meta["init"]}"'
    if meta.get("source_file"):
        source = meta.get("source_format")
        rows["Imported from"] = meta["source_file"] + (f" ({format_title(source)})" if source else "")
    if meta.get("base_model"):
        rows["Base model"] = meta["base_model"]
    loss = validation_loss_text(meta.get("metrics", ""))
    if loss:
        rows["Validation loss"] = loss
    if meta.get("created"):
        rows["Created"] = created_text(meta["created"])
    return rows


def validation_loss_text(metrics: str) -> str:
    """The `metrics` header's validation loss in words: '0.2430 (best, at step 20; last 0.2497)', '0.2430',
    or '' (none recorded, or not JSON)."""
    try:
        values = json.loads(metrics)
    except (json.JSONDecodeError, TypeError):
        return ""
    if not isinstance(values, dict):
        return ""
    best, last, step = values.get("best_val_loss"), values.get("val_loss"), values.get("best_val_step")
    if not isinstance(best, int | float):
        return f"{last:.4f}" if isinstance(last, int | float) else ""
    text = f"{best:.4f} (best, at step {step}" if isinstance(step, int) else f"{best:.4f} (best"
    if isinstance(last, int | float) and f"{last:.4f}" != f"{best:.4f}":
        text += f"; last {last:.4f}"
    return text + ")"


def created_text(created: str) -> str:
    """'2026-11-28T13:32:27+00:00' -> '2026-11-28 13:32 UTC' (another offset is kept: '… UTC+01:00'); a
    value that is not an ISO time is shown as written."""
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        return created
    offset = when.utcoffset()
    if offset is None:
        return when.strftime("%Y-%m-%d %H:%M")
    return when.strftime("%Y-%m-%d %H:%M UTC") + ("" if offset == timedelta(0) else when.isoformat()[-6:])


def raw_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """The header as stored, for st.json: the values that hold JSON (metrics, trainer config, parent) read as
    structures, so they print over lines instead of one cut-off line; one that is not JSON stays text."""
    raw: dict[str, Any] = dict(meta)
    for key in JSON_META:
        if key in raw:
            with contextlib.suppress(json.JSONDecodeError):  # not JSON: shown as the text it is
                raw[key] = json.loads(raw[key])
    return raw


def card_picture(data: bytes) -> Any:
    """A card's picture from its thumbnail's bytes: the first tile of the preview strip (8 samples side by
    side), enlarged with its pixels sharp: one sample at a readable size, not eight at 27 px each."""
    from PIL import Image

    from studio.app.pictures import enlarged, first_tile

    with Image.open(io.BytesIO(data)) as image:
        return enlarged(first_tile(image.convert("RGB")), at_most=CARD_SIDE)


def details_picture(data: bytes) -> Any:
    """The whole preview strip for the details panel, at twice its size (pixels kept sharp) if it is small."""
    from PIL import Image

    from studio.app.pictures import enlarged

    with Image.open(io.BytesIO(data)) as image:
        return enlarged(image.convert("RGB"), at_most=min(DETAILS_SIDE, 2 * max(image.size)))


# A card without a thumbnail: a square as large as a card's picture (so the cards of a row line up), a plain
# coin (the studio's icon) and the words. SVG: the browser draws it sharp at any size, and the page opens no
# image for it (a card must not fail on its placeholder).
NO_PREVIEW_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 256 256" width="192" height="192">'
    '<rect width="256" height="256" fill="#f0f2f6"/>'
    '<circle cx="128" cy="112" r="44" fill="none" stroke="#bec2cc" stroke-width="6"/>'
    '<circle cx="128" cy="112" r="28" fill="none" stroke="#bec2cc" stroke-width="3"/>'
    '<text x="128" y="200" text-anchor="middle" font-family="sans-serif" font-size="22" fill="#808495">'
    "no preview</text></svg>"
)


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
    words = [entry.name, entry.family, family_words(entry.family), entry.meta.get("init", "")]
    haystack = " ".join([*words, lineage_text(entry.meta)])  # 'sd1' and 'SD 1.x', as the card says it
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
