"""The blend expression language (strings only; `maths.blend` does the tensors).

0.5*<cat> + 0.5*<dog>          weighted sum of stored embeddings (lerp)
<cat> - 0.3*<dog>              weights may be negative; a bare operand weighs 1
slerp(<cat>, <dog>, 0.3)       spherical interpolation, 0.3 of the way from cat to dog
0.6*keyboard + 0.4*typewriter  ordinary words (needs a model); quote phrases: 0.5*'red car'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from embeddings.errors import TokensmithError

TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
    r"|<(?P<emb>[^<>\s]+)>|'(?P<sq>[^']+)'|\"(?P<dq>[^\"]+)\"|(?P<word>[A-Za-z_][\w-]*)|(?P<op>[-+*(),]))"
)


class BlendSyntaxError(TokensmithError, ValueError):
    """A blend expression that does not parse; the message shows where."""


@dataclass(frozen=True)
class Operand:
    kind: str  # "embedding" | "word"
    text: str  # the stored name, or the word/phrase


@dataclass(frozen=True)
class BlendSpec:
    method: str  # "lerp" | "slerp"
    parts: tuple[tuple[Operand, float], ...]

    @property
    def needs_model(self) -> bool:
        return any(op.kind == "word" for op, _ in self.parts)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise BlendSyntaxError(
                f"cannot read the blend expression at {text[pos:].strip()[:20]!r} (column {pos + 1})"
            )
        kind = match.lastgroup
        value = match.group(kind)
        out.append(("word" if kind in ("sq", "dq") else kind, value))
        pos = match.end()
    return out


def parse_blend(text: str) -> BlendSpec:
    """'0.5*<cat> + 0.5*<dog>' -> BlendSpec('lerp', ((Operand('embedding', 'cat'), 0.5), (..., 0.5)))."""
    tokens = _tokens(text)
    if not tokens:
        raise BlendSyntaxError("the blend expression is empty; e.g. '0.5*<cat> + 0.5*<dog>'")
    if tokens[0] == ("word", "slerp") or tokens[0] == ("word", "lerp"):
        return _parse_call(tokens, text)
    parts, i, sign = [], 0, 1.0
    while i < len(tokens):
        if tokens[i][0] == "op" and tokens[i][1] in "+-":
            sign = sign * (-1.0 if tokens[i][1] == "-" else 1.0)
            i += 1
            continue
        (operand, weight), i = _term(tokens, i, text)
        parts.append((operand, sign * weight))
        sign = 1.0
        if i < len(tokens) and not (tokens[i][0] == "op" and tokens[i][1] in "+-"):
            raise BlendSyntaxError(f"expected + or - after an operand in {text!r}, found {tokens[i][1]!r}")
        if i < len(tokens) and i == len(tokens) - 1:
            raise BlendSyntaxError(f"the blend expression {text!r} ends with an operator")
    if not parts:
        raise BlendSyntaxError(f"no operands in {text!r}")
    return BlendSpec("lerp", tuple(parts))


def _operand(token: tuple[str, str], text: str) -> Operand:
    kind, value = token
    if kind == "emb":
        return Operand("embedding", value)
    if kind == "word":
        return Operand("word", value)
    raise BlendSyntaxError(f"expected <name> or a word in {text!r}, found {value!r}")


def _term(tokens: list[tuple[str, str]], i: int, text: str) -> tuple[tuple[Operand, float], int]:
    """number '*' operand | operand ['*' number] | operand."""

    def at(j: int) -> tuple[str, str]:
        return tokens[j] if j < len(tokens) else ("end", "end of expression")

    if at(i)[0] == "num":
        if at(i + 1) != ("op", "*"):
            raise BlendSyntaxError(f"expected '*' after {at(i)[1]} in {text!r}")
        return (_operand(at(i + 2), text), _number(at(i)[1])), i + 3
    operand = _operand(at(i), text)
    if at(i + 1) == ("op", "*"):
        if at(i + 2)[0] != "num":
            raise BlendSyntaxError(f"expected a number after '*' in {text!r}")
        return (operand, _number(at(i + 2)[1])), i + 3
    return (operand, 1.0), i + 1


def _number(text: str) -> float:
    """A weight as written; one too large for a float (1e400) is an error, not infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise BlendSyntaxError(f"the number {text} is too large for a weight")
    return value


def _parse_call(tokens: list[tuple[str, str]], text: str) -> BlendSpec:
    shape = [k if k != "op" else v for k, v in tokens]
    if len(tokens) != 8 or shape[1] != "(" or shape[3] != "," or shape[5] != "," or shape[7] != ")":
        raise BlendSyntaxError(f"write {tokens[0][1]}(<a>, <b>, t) with t between 0 and 1; got {text!r}")
    if tokens[6][0] != "num":
        raise BlendSyntaxError(f"the third argument of {tokens[0][1]} must be a number; got {tokens[6][1]!r}")
    t = float(tokens[6][1])
    if not 0.0 <= t <= 1.0:
        raise BlendSyntaxError(
            f"{tokens[0][1]}'s t must be between 0 and 1 (0: the first, 1: the second); got {t:g}"
        )
    a, b = _operand(tokens[2], text), _operand(tokens[4], text)
    return BlendSpec(tokens[0][1], ((a, 1.0 - t), (b, t)))
