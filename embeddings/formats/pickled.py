"""Pickled files (`.pt`, `.bin`): A1111 embeddings, diffusers `learned_embeds.bin`, kohya `.pt`.

Loaded only with `torch.load(..., weights_only=True)`: tensors, dicts, lists, strings and numbers, nothing
that runs code. A pickle that asks for anything else is refused with a clear error; none of it is executed.
When torch refuses a file, its opcodes are read with `pickletools` (which executes nothing) to tell a pickle
that imports code (refused as unsafe, whatever tripped torch first) from a corrupt one.

A zip-format file's records are checked before torch reads any: torch.save stores them as they are, but
torch's reader also inflates compressed ones, so a re-zipped 1 MB file could unpack to GBs in memory.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import warnings
import zipfile
from collections import deque
from pathlib import Path

import torch

from embeddings.errors import EmbeddingFormatError
from embeddings.files import atomic_write
from embeddings.formats.layouts import A1111_EXTRA_KEY, carried_meta, embedding_from_dict
from embeddings.value import SINGLE_KEY, Embedding

A1111_PLACEHOLDER_ID = 265  # the id A1111 records for its "*" placeholder (string_to_token); informative only
MAX_PICKLE_SCAN = 8 * 1024 * 1024  # the opcode scan reads at most this much (an embedding's pickle is KBs)
LEGACY_PICKLES = 5  # torch's legacy format: magic, protocol, system info, the object, storage keys
STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}
GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
QUIET_OPS = {"PROTO", "FRAME", "MEMOIZE", *PUT_OPS}  # opcodes that push nothing onto the stack
ZIP_MAGIC = b"PK\x03\x04"  # torch reads a file as a zip when it starts so
COMPRESSIONS = {zipfile.ZIP_DEFLATED: "deflated", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


class UnsafePickleError(EmbeddingFormatError):
    """A pickle asked to import code or build objects beyond plain data: refused, never executed."""


def _allow_parameter_dicts() -> contextlib.AbstractContextManager:
    """Also accept torch.nn.ParameterDict: the original textual-inversion code (and A1111 files saved by torch
    1.11) pickle `string_to_param` as one. Restoring it only fills attributes; no code from the file runs.
    """
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals([torch.nn.ParameterDict]) if safe_globals else contextlib.nullcontext()


def _unpickler_reason(exc: Exception) -> str:
    """The line of torch's weights-only refusal that says what it met: 'Unsupported global: GLOBAL os.system',
    'Trying to load unsupported GLOBAL posix.system whose module posix is blocked', 'Unsupported operand 149'.

    Never torch's advice around it, which suggests re-running with weights_only=False: for an untrusted file
    that is the one thing not to do.
    """
    lines = [line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(exc).splitlines()]
    detail = [line for line in lines if "unsupported" in line.lower() and "weights_only" not in line]
    if not detail:
        return "torch's weights-only loader refused it"
    return detail[0].split(". Please")[0]  # not its advice to allow-list what it refused


def _safe_globals() -> set[str] | None:
    """'module.name' of every global torch's weights-only loader allows (and our ParameterDict); None where
    torch does not say (the list is private API), and then `_is_safe_global` goes by a rule."""
    from torch import _weights_only_unpickler as unpickler

    allowed = getattr(unpickler, "_get_allowed_globals", None)
    if allowed is None:
        return None
    return set(allowed()) | {"torch.nn.modules.container.ParameterDict"}


def _is_safe_global(name: str, safe: set[str] | None) -> bool:
    if safe is not None:
        return name in safe
    return name.startswith("torch.") or name in ("collections.OrderedDict", "_codecs.encode")


def pickle_globals(data: bytes, *, pickles: int = LEGACY_PICKLES) -> list[str]:
    """'module.name' of every global the first `pickles` pickles in `data` import (GLOBAL, INST,
    STACK_GLOBAL), in order, read with pickletools: nothing is executed. A torch legacy file is five pickles,
    then raw tensor bytes, which are never read as opcodes; the scan also stops where the opcodes stop making
    sense (a file cut short). A STACK_GLOBAL whose names the scan cannot follow is left out: the file is
    refused anyway, and raw bytes must not read as an import."""
    found: list[str] = []
    stream = io.BytesIO(data[:MAX_PICKLE_SCAN])
    for _ in range(pickles):
        if stream.tell() >= len(data):
            break
        recent: deque[object] = deque(maxlen=2)  # what the last opcodes pushed: strings, None for others
        memo: dict[object, object] = {}
        try:
            for opcode, arg, _pos in pickletools.genops(stream):
                name = opcode.name
                if name in ("GLOBAL", "INST"):
                    found.append(".".join(str(arg).split(" ", 1)))
                elif name == "STACK_GLOBAL" and len(recent) == 2:
                    module, attr = recent
                    if isinstance(module, str) and isinstance(attr, str):
                        found.append(f"{module}.{attr}")
                if name in STRING_OPS:
                    recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
                elif name in GET_OPS:
                    recent.append(memo.get(arg))
                elif name == "MEMOIZE":
                    memo[len(memo)] = recent[-1] if recent else None
                elif name in PUT_OPS:
                    memo[arg] = recent[-1] if recent else None
                elif name not in QUIET_OPS:
                    recent.append(None)
        except (ValueError, KeyError, EOFError, IndexError, UnicodeDecodeError):
            break  # a corrupt or cut-short pickle: nothing more to read
    return found


def _pickle_bytes(path: Path) -> bytes:
    """The pickle bytes torch would read, at most MAX_PICKLE_SCAN of them: a zip file's one top-level
    `<archive>/data.pkl` (never every member: a small zip can hold many large ones), else the file's head."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            top = [m for m in archive.infolist() if m.filename.count("/") == 1]
            member = next((m for m in top if m.filename.endswith("/data.pkl")), None)
            if member is None:
                return b""
            with archive.open(member) as pickled:
                return pickled.read(MAX_PICKLE_SCAN)
    with open(path, "rb") as file:
        return file.read(MAX_PICKLE_SCAN)


def _unsafe_globals(path: Path) -> list[str]:
    """The globals outside torch's safe set that `path`'s pickle imports."""
    try:
        data = _pickle_bytes(path)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError):  # unreadable, or a broken zip
        return []
    safe = _safe_globals()
    return list(dict.fromkeys(name for name in pickle_globals(data) if not _is_safe_global(name, safe)))


def _refusal(path: Path, exc: Exception) -> EmbeddingFormatError:
    """The error for a file torch's weights-only loader refused: unsafe when torch names a global it refused,
    or when the pickle's opcodes import anything outside torch's safe set (whatever torch tripped over first:
    protocol 4's FRAME comes before the GLOBAL); else corrupt, truncated, or not torch's."""
    reason = _unpickler_reason(exc) if isinstance(exc, pickle.UnpicklingError) else ""
    if "global" in reason.lower():  # it names a function or class to import: what an attack needs
        return _unsafe(path, _first_sentence(reason))
    unsafe = _unsafe_globals(path)
    if unsafe:
        return _unsafe(path, "it imports " + ", ".join(unsafe[:3]) + (", ..." if len(unsafe) > 3 else ""))
    if reason:
        return EmbeddingFormatError(
            f"{path}: not a readable torch file: corrupt, not a pickle, or pickled in a way torch's safe "
            f"loader does not read; nothing was executed ({_first_sentence(reason)})"
        )
    if _is_cut_zip(path):
        return _cut_zip(path)
    if "wrong byte size" in str(exc):  # legacy files; torch's own text is "expected %ld got %ld<digits>"
        return EmbeddingFormatError(
            f"{path}: not a readable torch file: truncated or edited: a tensor claims more (or fewer) bytes "
            "than the file holds for it; download or copy it again"
        )
    text = _first_sentence(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
    return EmbeddingFormatError(
        f"{path}: not a readable torch file: truncated, or not written by torch.save "
        f"({type(exc).__name__}{': ' + text if text else ''})"
    )


def _unsafe(path: Path, detail: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"{path}: refused: this pickle wants to run code or build objects that are not plain tensors and "
        f"dicts, so it may be malicious; nothing was executed ({detail})"
    )


def _cut_zip(path: Path) -> EmbeddingFormatError:
    return EmbeddingFormatError(
        f"{path}: the file is truncated (it ends early: the zip directory torch files end with is "
        "missing); download or copy it again"
    )


def _is_cut_zip(path: Path) -> bool:
    """A file that starts as a zip (torch's format since 1.6) but has no zip directory at its end: cut off."""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError:
        return False
    return head == ZIP_MAGIC and not zipfile.is_zipfile(path)


def _first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of a library's message, whole (miniz's run on: '... If you are seeing this error,
    there is a high'), cut at `limit` characters only when the sentence is longer."""
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


# --- zip records, checked before torch reads them ---
def _starts_as_zip(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == ZIP_MAGIC


def check_zip_records(path: Path, *, max_bytes: int | None = None) -> None:
    """EmbeddingFormatError unless every record of a zip-format torch file is stored as torch.save stores it
    (uncompressed) and, with `max_bytes`, the records add up to at most that many bytes. Legacy (non-zip)
    files pass: torch reads their tensors straight from the file.

    torch never compresses a record, but its reader inflates one into memory, so a 1 MB file re-zipped with
    deflate can hold a 1 GB tensor; stored records that overlap (one span of the file named many times) add
    up past the file's size the same way.
    """
    if not _starts_as_zip(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        if _is_cut_zip(path):
            raise _cut_zip(path) from None
        raise EmbeddingFormatError(
            f"{path}: not a readable torch file: its zip directory is broken ({_first_sentence(str(exc))}); "
            "download or copy it again"
        ) from None
    packed = next((r for r in records if r.compress_type != zipfile.ZIP_STORED), None)
    if packed is not None:
        method = COMPRESSIONS.get(packed.compress_type, f"compression method {packed.compress_type}")
        raise EmbeddingFormatError(
            f"{path}: refused: its record {packed.filename} is {method}, and torch.save (so A1111 too) never "
            "compresses one: this is not a file torch or A1111 wrote, and it could unpack to far more memory "
            "than its size; get the original file from where it was published"
        )
    total = sum(record.file_size for record in records)
    if max_bytes is not None and total > max_bytes:
        raise EmbeddingFormatError(
            f"{path}: refused: its zip records add up to {total / 2**20:.0f} MB, more than the file holds or "
            f"an embedding needs ({max_bytes // 2**20} MB at most): this is not a file torch or A1111 wrote; "
            "get the original file from where it was published"
        )


def load_pickle(path: Path, *, mmap: bool = False, max_bytes: int | None = None) -> object:
    """The plain data inside a torch pickle, refusing anything else (weights_only=True). `mmap` maps the
    tensors of a zip-format file instead of reading them (for multi-GB checkpoints); legacy files are read.
    A zip-format file's records are checked first (`check_zip_records`, with `max_bytes`)."""
    check_zip_records(path, max_bytes=max_bytes)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads fine; we report errors
            warnings.simplefilter("ignore", UserWarning)
            with _allow_parameter_dicts():
                if mmap and zipfile.is_zipfile(path):
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                # An open file, not the path: torch picks its safetensors reader for a path that ends in
                # .safetensors, and A1111 pickles get renamed so.
                with open(path, "rb") as file:
                    return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # the untrusted-file boundary: torch raises many types here
        raise _refusal(path, exc) from None


def read_pickled(path: Path, *, max_bytes: int | None = None) -> Embedding:
    """An Embedding from an A1111 `.pt`, a diffusers `.bin` or a kohya `.pt`; a zip-format file whose
    records add up to more than `max_bytes` is refused before torch reads it."""
    return embedding_from_dict(load_pickle(path, max_bytes=max_bytes), path=path, source_format="pickle")


def a1111_dict(emb: Embedding) -> dict:
    """The dict A1111 saves: `string_to_param` plus `name`/`step`/checkpoint for one encoder; for SDXL only
    `clip_l`/`clip_g` tensors, because A1111's SDXL branch calls `.detach()` on every value of the dict (the
    name then comes from the file stem, as A1111 does for every .pt).

    One encoder's dict also carries the rest of the metadata (family, init, trainer, lineage) as a dict of
    strings under `tokensmith`: A1111 and diffusers read only the keys they know, so nothing is lost.
    """
    if set(emb.vectors) != {SINGLE_KEY}:
        return {k: v.clone() for k, v in emb.vectors.items()}
    steps = emb.meta.get("steps", "")
    return {
        "string_to_token": {"*": A1111_PLACEHOLDER_ID},
        "string_to_param": {"*": emb.vectors[SINGLE_KEY].clone()},
        "name": emb.name,
        "step": int(steps) if steps.isdigit() else None,
        "sd_checkpoint": emb.meta.get("a1111.sd_checkpoint"),
        "sd_checkpoint_name": emb.meta.get("a1111.sd_checkpoint_name") or emb.meta.get("base_model"),
        A1111_EXTRA_KEY: carried_meta(emb),
    }


def write_a1111_pt(emb: Embedding, path: Path) -> Path:
    """Write the A1111 `.pt` dict (loadable with weights_only=True), atomically."""
    buffer = io.BytesIO()
    torch.save(a1111_dict(emb), buffer)
    return atomic_write(Path(path), lambda tmp: tmp.write_bytes(buffer.getvalue()))
