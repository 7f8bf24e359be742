"""Text from files, made safe to print: a file's metadata or name shows its control characters as escapes,
so it cannot clear the screen, retitle the window or forge a line of a command's output; and a shell word
that stays one line whatever the name holds."""

from __future__ import annotations

import re
import shlex

# C0 controls but tab, DEL and C1 controls (a terminal acts on all of them), and lone surrogates: what
# os.fsdecode makes of a file name's undecodable bytes (U+DC80..U+DCFF), or a header's "\ud800", which a
# UTF-8 terminal cannot be sent at all.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
# A shell word escapes a tab too: pasted into a shell without bracketed paste, a tab completes a name.
_SHELL_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    r"""`text` with its control characters (C0 but tab, DEL, C1) as escapes, everything else as it is:
    'a\x1b[2Jb\nc' -> 'a\\x1b[2Jb\\nc', 'café' -> 'café'.

    Narrower than nearest's token labels (embeddings/maths.py), which also escape spaces and every
    character that is not isprintable(): a token is one word, while metadata is prose in any script."""
    return _CONTROL.sub(lambda match: _shown(match.group()), text)


def shell_quote(text: str) -> str:
    r"""`text` as one shell word on one line: shlex.quote's, or bash's $'...' where `text` holds a control
    character (a newline in shlex.quote's quotes breaks a pasted command in two): 'a b' -> "'a b'",
    'x\x1b[2Jy\nz' -> "$'x\\x1b[2Jy\\nz'". The escapes give the name's own bytes back."""
    if not _SHELL_CONTROL.search(text):
        return shlex.quote(text)
    return "$'" + "".join(_quoted(char) for char in text) + "'"


def _shown(char: str) -> str:
    """One control character as people read it: '\\n', '\\x1b'; an undecodable file-name byte as that
    byte ('\\xff')."""
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _quoted(char: str) -> str:
    """One character inside bash's $'...': backslash and quote escaped, a control character as the bytes
    it is in the name (C1 U+0085 is '\\xc2\\x85' in a UTF-8 name, not '\\x85')."""
    if char in ("\\", "'"):
        return "\\" + char
    if not _SHELL_CONTROL.match(char):
        return char
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    raw = bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else char.encode("utf-8", "surrogatepass")
    return "".join(f"\\x{byte:02x}" for byte in raw)
