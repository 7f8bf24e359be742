"""Import: any embedding file users have (or a folder of them) -> Embedding values, with provenance kept.

import_path("bad-hands-5.pt")            # A1111 pickle (weights_only) -> [Embedding('bad-hands-5')]
import_path("EasyNegative.safetensors")  # kohya emb_params
import_path("sdxl-run/")                 # diffusers SDXL pair in a folder -> one clip_l/clip_g embedding
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

from embeddings.canonical import is_canonical_layout, load_canonical, load_safetensors, read_header
from embeddings.errors import EmbeddingFormatError
from embeddings.formats.diffusers import combine_pair, pair_of, same_token
from embeddings.formats.layouts import embedding_from_dict
from embeddings.formats.pickled import read_pickled
from embeddings.formats.png import PNG_SIGNATURE, read_image
from embeddings.names import safe_name
from embeddings.value import Embedding, family_claim_fits

SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt", ".png", ".webp")
MAX_FILE_BYTES = 256 * 1024 * 1024  # embeddings are KB to a few MB; a model checkpoint is GBs
# A foreign header's own bookkeeping: recomputed for the stored file (source_* describe this import).
FOREIGN_META_DROPPED = (
    "format",
    "sha256",
    "family",
    "num_vectors",
    "tokensmith.version",
    "name",
    "source_format",
    "source_file",
)


def sniff(path: Path) -> str:
    """'safetensors' | 'pickle' | 'image', from the first bytes (the suffix may lie).

    safetensors is tested first: its 8-byte header length can start with the bytes of a pickle's magic (0x80
    for a length of 128 + 256k, "PK" for 19280), while a pickle never has "{" at offset 8.
    """
    with open(path, "rb") as handle:
        head = handle.read(16)
        size = os.fstat(handle.fileno()).st_size
    if head.startswith(PNG_SIGNATURE) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < struct.unpack_from("<Q", head)[0] <= size - 8:
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "pickle"
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".png", ".webp"):
        return "image"
    return "pickle"


def import_file(path: Path) -> Embedding:
    """One file -> one Embedding (name made a valid store name; the original kept as `source_name`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise EmbeddingFormatError(
            f"{path}: {size / 2**20:.0f} MB is too large for an embedding (KB to a few MB); is it a model "
            "checkpoint?"
        )
    kind = sniff(path)
    if kind == "safetensors":
        emb = _read_safetensors(path)
    elif kind == "image":
        emb = read_image(path)
    else:  # a zip-format file's records are unpacked: they may not add up past the cap either
        emb = read_pickled(path, max_bytes=MAX_FILE_BYTES)
    name = safe_name(emb.name)
    return emb if name == emb.name else emb.with_name(name).with_meta(source_name=emb.name)


def _read_safetensors(path: Path) -> Embedding:
    keys = [k for k in read_header(path) if k != "__metadata__"]
    if is_canonical_layout(keys):
        emb = load_canonical(path)
        kind = "canonical" if "tokensmith.version" in emb.meta else ("sdxl" if "clip_l" in keys else "kohya")
        # a kohya/ComfyUI file's own `family` label (or an edited one) stands only where the widths allow it
        claim = emb.meta.get("family", "")
        family = None if claim and not family_claim_fits(claim, emb.widths) else claim or None
        return emb.with_meta(source_format=f"safetensors:{kind}", source_file=path.name, family=family)
    tensors, meta = load_safetensors(path)
    emb = embedding_from_dict(tensors, path=path, source_format="safetensors")
    kept = {k: v for k, v in meta.items() if k not in FOREIGN_META_DROPPED}
    if family_claim_fits(meta.get("family", ""), emb.widths):  # e.g. 'demo', which width 64 alone cannot say
        kept["family"] = meta["family"]
    return emb.with_meta(**kept)


def import_path(path: Path, *, skipped: list[tuple[Path, str]] | None = None) -> list[Embedding]:
    """Every embedding at `path`: a file, the diffusers SDXL pair (either file or its folder), or a folder
    with its subfolders (as A1111 scans its embeddings folder; hidden folders such as a store's .trash aside).

    In a folder, files that are not embeddings are appended to `skipped` as (path, reason) when a list is
    given; otherwise the first one raises. A single file always raises on error.
    """
    return [emb for _, emb in import_sources(path, skipped=skipped)]


def import_sources(
    path: Path, *, skipped: list[tuple[Path, str]] | None = None
) -> list[tuple[Path, Embedding]]:
    """`import_path`, each embedding with the file it came from (the folder, for a diffusers SDXL pair)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    pair = pair_of(path)
    if pair and not path.is_dir():
        first, second = (import_file(p) for p in pair)
        if not same_token(first, second):  # two unrelated files that happen to carry the pair's names
            return [(path, first if path == pair[0] else second)]
        return [(pair[0].parent, combine_pair(first, second, pair[0].parent))]
    if not path.is_dir():
        return [(path, import_file(path))]
    out: list[tuple[Path, Embedding]] = []
    for folder in _folders(path):
        out.extend(_import_folder(folder, skipped))
    if not out and not skipped:
        raise EmbeddingFormatError(
            f"{path}: no embedding files here or in its subfolders (looked for {', '.join(SUFFIXES)})"
        )
    return out


def _folders(top: Path) -> list[Path]:
    """`top` and every folder below it, in name order, hidden ones (.trash, .git) left out. Links to folders
    are followed, as A1111 does, each real folder once (a link back up would loop)."""
    seen: set[Path] = set()
    order: list[Path] = []

    def visit(folder: Path) -> None:
        real = folder.resolve()
        if real in seen:
            return
        seen.add(real)
        order.append(folder)
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return  # an unreadable subfolder: its files cannot be candidates either
        for child in children:
            visit(child)

    visit(top)
    return order


def _import_folder(path: Path, skipped: list[tuple[Path, str]] | None) -> list[tuple[Path, Embedding]]:
    """The embeddings of the files directly in `path` (its SDXL pair as one)."""
    out: list[tuple[Path, Embedding]] = []
    paired: set[Path] = set()
    pair = pair_of(path)
    if pair:
        # two files of different tokens are imported one by one below; any other fault of the pair (the
        # halves disagree on the vector count, one is unreadable) is the pair's, as when one file is given
        try:
            first, second = (import_file(p) for p in pair)
            if same_token(first, second):
                out.append((path, combine_pair(first, second, path)))
                paired.update(pair)
        except (EmbeddingFormatError, OSError) as exc:
            if skipped is None:
                raise
            skipped.append((path, str(exc)))
            paired.update(pair)  # neither half is imported alone: it would not be the SDXL embedding
    for file in sorted(path.iterdir()):
        if file in paired or not _is_candidate(file):
            continue
        try:
            out.append((file, import_file(file)))
        except (EmbeddingFormatError, OSError) as exc:
            if skipped is None:
                raise
            skipped.append((file, str(exc)))
    return out


def _is_candidate(file: Path) -> bool:
    name = file.name.lower()
    return (
        file.is_file()
        and not name.startswith(".")
        and not name.endswith(".preview.png")
        and file.suffix.lower() in SUFFIXES
    )


def lone_pair_half(path: Path) -> str | None:
    """What to do with a file that is one half of a diffusers SDXL pair met without its partner, else None.

    It is named `learned_embeds_2.*` (the name only diffusers' SDXL script writes), or its header says
    `family: sdxl` while it holds one encoder's vectors (tokensmith writes that header into both halves).
    On its own such a file imports as an unrelated single-encoder embedding: the clip_g half is useless
    alone, and the clip_l half is the SDXL concept without its larger encoder.
    """
    path = Path(path)
    if not path.is_file() or pair_of(path) is not None:
        return None
    stem = path.name.lower().partition(".")[0]
    if stem != "learned_embeds_2" and not _claims_sdxl_with_one_key(path):
        return None
    if stem == "learned_embeds_2":
        half, partner = "the clip_g (text_encoder_2) half", "learned_embeds" + path.suffix
    elif stem == "learned_embeds":
        half, partner = "the clip_l (text_encoder) half", "learned_embeds_2" + path.suffix
    else:
        half, partner = "one half", "its partner (learned_embeds + learned_embeds_2)"
    return (
        f"this is {half} of a diffusers SDXL pair, alone it is not the SDXL embedding: put it beside "
        f"{partner} and import their folder"
    )


def _claims_sdxl_with_one_key(path: Path) -> bool:
    """A diffusers {token: tensor} safetensors file whose header says `family: sdxl`."""
    if sniff(path) != "safetensors":
        return False
    try:
        header = read_header(path)
    except (EmbeddingFormatError, OSError):
        return False  # unreadable: the import itself says why
    keys = [k for k in header if k != "__metadata__"]
    meta = header.get("__metadata__") or {}
    return not is_canonical_layout(keys) and meta.get("family") == "sdxl"


# --- several files in one import (the CLI's arguments, the studio's uploads) ---
def distinct_sources(found: Sequence[tuple[Path, Embedding]]) -> list[tuple[Path, Embedding]]:
    """`found` (file, embedding) without repeats: the same file reached twice (given twice, or in a folder
    also given), or two files holding the same embedding under the same name (a copy). The first of each
    is kept."""
    seen: set = set()
    out = []
    for source, emb in found:
        keys = {("file", Path(source).resolve()), ("embedding", emb.name, emb.sha256)}
        if keys & seen:
            continue
        seen |= keys
        out.append((source, emb))
    return out


def name_clashes(found: Sequence[tuple[Path | str, Embedding]]) -> list[str]:
    """One sentence per name that several of `found`'s embeddings hold, naming their files, in the order
    met: what an import refuses before it stores any (the caller adds its own way out). Letter case aside:
    <Cat> and <cat> are one token in a prompt.

    '2 files hold an embedding named <Cat> / <cat> (letter case aside, one token in a prompt): Cat.pt
    (<Cat>), cat.safetensors (<cat>)'; one spelling: '... named <cat> (...): a/cat.pt, b/cat.pt'."""
    by_name: dict[str, list[tuple[str, str]]] = {}
    for source, emb in found:
        by_name.setdefault(emb.name.lower(), []).append((str(source), emb.name))
    clashes = []
    for held in by_name.values():
        if len(held) < 2:
            continue
        spellings = list(dict.fromkeys(name for _, name in held))
        files = [f"{source} (<{name}>)" if len(spellings) > 1 else source for source, name in held]
        clashes.append(
            f"{len(held)} files hold an embedding named {' / '.join(f'<{n}>' for n in spellings)} (letter "
            f"case aside, one token in a prompt): {', '.join(files)}"
        )
    return clashes
