"""What the Library shows about a stored embedding, as plain values: its card line, lineage, search match and
the bytes of each export format (no Streamlit here, so the page stays a thin script)."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from dataclasses import dataclass
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


def skipped_text(path: Path, reason: str) -> str:
    """The warning for a stored file that cannot be read, worded as `tokensmith list` warns, with what to do:
    'skipped broken.safetensors: <reason>; see `tokensmith doctor …`, then replace or remove the file'."""
    return (
        f"skipped `{path.name}`: {reason}. See `tokensmith doctor {path}`, then replace the file with a "
        "good copy, or move it out of the library folder, to clear this warning."
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
