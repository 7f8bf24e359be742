"""The doctor's word on a file in the store's own folder: one copied in by hand under a name the store
refuses (the rename that fixes it), or one the store's listing skips (another tool's layout, a `.pt`): why,
and the way out, so that the doctor never says "use <x> in prompts" of a file prompts cannot reach."""

from __future__ import annotations

from pathlib import Path

from embeddings.canonical import canonical_shapes, read_header
from embeddings.errors import EmbeddingFormatError
from embeddings.files import SUFFIX
from embeddings.names import is_valid_name, stray_name_error
from embeddings.text import shell_quote
from embeddings.value import Embedding

# How the warning for a store-folder file that the store skips begins (the studio leaves it out where the
# Library already shows that file with its own ways out).
SKIPPED_WARNING = "the store skips this file"
# Why, for a .pt or .bin in its folder (as `list` says).
OTHER_FORMAT = "the store reads only .safetensors files"


def store_warnings(emb: Embedding, path: Path, store_root: Path | None) -> tuple[list[str], str | None]:
    """The warnings about `path`'s place in the store (its name; whether the store skips it) and, when the
    store skips it, why (None: prompts can reach it once stored under its name)."""
    warnings = _name_warnings(emb, path, store_root)
    skipped = store_refusal(path, store_root)
    if skipped is not None:
        warnings.append(_skipped_warning(emb, path, skipped))
    return warnings, skipped


def in_store(path: Path, store_root: Path | None) -> bool:
    """Whether `path` is a file directly in the store's folder (where `list` reads)."""
    return store_root is not None and path.is_file() and path.parent.resolve() == Path(store_root).resolve()


def store_refusal(path: Path, store_root: Path | None) -> str | None:
    """Why the store's listing skips `path`, a file in the store folder under a valid name whose header it
    does not take (another tool's layout, such as diffusers' {token: tensor}; keys that disagree): the
    reason `tokensmith list` warns with, without the path. None for a file it lists, one elsewhere, or one
    under a name it refuses (`_name_warnings` gives that one its rename)."""
    if not path.name.endswith(SUFFIX):  # a .pt, .bin or image beside the store's files: list notes it
        return OTHER_FORMAT if in_store(path, store_root) and not path.name.startswith(".") else None
    stem = path.name[: -len(SUFFIX)]
    if stem.startswith(".") or not is_valid_name(stem) or not in_store(path, store_root):
        return None
    try:
        canonical_shapes(path, read_header(path))  # the listing's own rule (embeddings/listing.py)
    except EmbeddingFormatError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except OSError:
        return None  # unreadable: reading it for the report said so already
    return None


def _skipped_warning(emb: Embedding, path: Path, reason: str) -> str:
    """What to do with a store file the store skips: import it (here the converted copy, as `emb` is what
    an import stores), then move this file to the trash; under its own name, --force replaces it at once."""
    where = shell_quote(str(path))
    stem = path.name[: -len(SUFFIX)]
    if not path.name.endswith(SUFFIX):  # `rm` takes store names: this file is moved out by hand
        way_out = (
            f"`tokensmith import {where}` stores a copy the store reads as <{emb.name}>; then move this file "
            "out of the store folder"
        )
    elif emb.name.lower() == stem.lower():
        way_out = f"`tokensmith import --force {where}` replaces it with a copy the store reads"
    else:
        way_out = (
            f"`tokensmith import {where}` stores a copy the store reads as <{emb.name}>, then "
            f"`tokensmith rm {shell_quote(stem)}` moves this file to the trash"
        )
    return f"{SKIPPED_WARNING}, so prompts cannot use it ({reason}): {way_out}"


def _name_warnings(emb: Embedding, path: Path, store_root: Path | None) -> list[str]:
    """A sentence when the file's name is not a store name: for a file in the store folder (copied in by
    hand) the rename that fixes it, as `list` gives it; elsewhere the name an import would store it as."""
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else ""
    if in_store(path, store_root) and stem and not stem.startswith(".") and not is_valid_name(stem):
        return [f"the store cannot use this file under its name: {stray_name_error(stem)}"]
    if emb.meta.get("source_name"):
        return [
            f"its name {emb.meta['source_name']!r} would be stored as '{emb.name}' by `tokensmith import` "
            "(safe characters)"
        ]
    return []
