"""What an embedding may be called: one rule for every name the store holds, and a valid name made from any
text (a file stem, another tool's name)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

from embeddings.errors import StoreError, StrayNameError
from embeddings.text import shell_quote

NAME_RULE = "1-64 characters from letters, digits, '_', '-' and '.', starting with a letter or digit"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Device names Windows reserves whatever the extension ("nul.safetensors" is the null device there).
RESERVED = {"con", "prn", "aux", "nul"} | {f"{kind}{i}" for kind in ("com", "lpt") for i in range(1, 10)}


def _is_reserved(name: str) -> bool:
    return name.split(".", 1)[0].lower() in RESERVED


def validate_name(name: str) -> str:
    """Return `name` if it is a safe embedding name, else raise StoreError saying the rule."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise StoreError(f"invalid embedding name {name!r}: use {NAME_RULE} (no '..', no path separators)")
    if name.endswith(".preview") or name.endswith(".tmp"):
        raise StoreError(f"invalid embedding name {name!r}: names may not end in '.preview' or '.tmp'")
    if _is_reserved(name):
        raise StoreError(
            f"invalid embedding name {name!r}: {name.split('.', 1)[0]} is a device name on Windows; "
            "choose another name"
        )
    return name


def safe_name(text: str) -> str:
    """A valid name made from any text (a file stem, an A1111 `name`): 'bad hands (v5)' -> 'bad-hands-v5',
    'café' -> 'cafe' (accents dropped, not the letters)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", _ascii_letters(text).strip()).strip("-.")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    cleaned = re.sub(r"\.(preview|tmp)$", "", cleaned)[:64].rstrip("-.")
    if not cleaned:  # nothing ASCII left ('日本'): a stable name from the text, distinct per text
        return "emb-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    cleaned = cleaned if cleaned[0].isalnum() else ("emb-" + cleaned).rstrip("-.")[:64]
    return "emb-" + cleaned[:60] if _is_reserved(cleaned) else cleaned


def _ascii_letters(text: str) -> str:
    """`text` with accents taken off letters ('café' -> 'cafe', 'ﬁ' -> 'fi'); other characters stay as they
    are (the caller replaces them)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def is_valid_name(name: str) -> bool:
    """Whether `validate_name` accepts `name`."""
    return name_refusal(name) is None


def name_refusal(name: str) -> str | None:
    """Why `validate_name` refuses `name`, without its advice to choose another (a rename suggestion follows
    it where the name is a file's), or None for a valid name."""
    try:
        validate_name(name)
    except StoreError as exc:
        return str(exc).split("; choose another name")[0]
    return None


def stray_name_error(name: str) -> StrayNameError:
    """The error for a file copied into the store under `name`, which is not an embedding name: why, and the
    commands that give it one or trash it: "invalid embedding name 'EasyNegative (1)': ...; `tokensmith
    rename 'EasyNegative (1)' EasyNegative-1` gives it a valid name (or `tokensmith rm ...` moves it to the
    trash)". The facts travel as attributes too, for a door without a shell (see StrayNameError)."""
    reason = name_refusal(name) or f"'{name}' is a valid name"
    valid = safe_name(name)
    return StrayNameError(
        f"{reason}; `tokensmith rename {shell_quote(name)} {valid}` gives it a valid name (or "
        f"`tokensmith rm {shell_quote(name)}` moves it to the trash)",
        name=name,
        reason=reason,
        valid_name=valid,
    )
