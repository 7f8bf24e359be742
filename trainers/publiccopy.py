"""The copy of a stored embedding's file that goes public: the same tensors (so the same sha256) under
tokensmith's own metadata only, every local path cut to its base name (in JSON values too). The store's
file keeps everything, for resumes and `runs`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path, PureWindowsPath

from embeddings import Embedding, load_canonical
from embeddings.canonical import canonical_bytes

# The metadata keys tokensmith writes and documents (DESIGN.md), and the a1111.* keys its importer writes and
# `export --format a1111-pt` reads back (the checkpoint name and hash an A1111 file recorded). Another tool's
# own keys (kohya's ss_*, which hold output and dataset folders and caption tags; modelspec.*) stay in the
# store's file and are left out of the uploaded copy: their values are not ours to vet, and the card already
# says what the file's provenance is.
PUBLIC_KEYS = (
    "tokensmith.version",
    "format",
    "name",
    "family",
    "base_model",
    "num_vectors",
    "init",
    "steps",
    "created",
    "trainer",
    "metrics",
    "parent",
    "sha256",
    "source_format",
    "source_file",
    "source_name",
    "token",
)
PUBLIC_PREFIXES = ("a1111.",)


def is_local_path(value: str) -> bool:
    """Whether a recorded model/images/... value names a file or folder on this machine (absolute, as the
    trainer records them, or ~ / ./ relative), not a hub id, `demo` or another tool's label."""
    return value.startswith(("/", "~", "./", "../", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", value))


def cut_path(value):
    """A local path cut to its base name ('/home/ann/models/sd15' -> 'sd15'); anything else as it is."""
    if isinstance(value, str) and is_local_path(value):
        return PureWindowsPath(value).name or value  # splits on / and \ alike
    return value


def _public_json(value):
    """`value` (parsed JSON) with every local path cut, in keys as in values, at any depth."""
    if isinstance(value, dict):
        return {cut_path(k): _public_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_public_json(v) for v in value]
    return cut_path(value)


def public_value(text: str) -> str:
    """A metadata value as it goes public: a local path cut to its base name; JSON text (the trainer's
    config, a lineage) with the paths inside it cut, the same text when there are none.
    '{"images": "/home/ann/cat"}' -> '{"images": "cat"}'."""
    if is_local_path(text):
        return cut_path(text)
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if not isinstance(parsed, dict | list):
        return text
    cut = _public_json(parsed)
    return text if cut == parsed else json.dumps(cut)


def public_meta(meta: dict[str, str]) -> dict[str, str]:
    """The metadata of the uploaded copy: PUBLIC_KEYS only, local paths (the base model, the trainer config's
    images, run_dir, model, templates...) cut to their base names wherever they are; the store's file keeps
    all of it, for resumes and `runs`."""
    return {
        key: public_value(value)
        for key, value in meta.items()
        if key in PUBLIC_KEYS or key.startswith(PUBLIC_PREFIXES)
    }


def write_public_copy(path: Path, dest: Path) -> None:
    """The store's file at `path` as it is uploaded, written to `dest`: the same tensors (so the same sha256)
    under public_meta; a byte copy when public_meta changes nothing."""
    stored = load_canonical(path)
    meta = public_meta(stored.meta)
    if meta == stored.meta:
        shutil.copyfile(path, dest)
    else:
        dest.write_bytes(canonical_bytes(Embedding(stored.name, stored.vectors, meta)))
