"""The prompt language, strings only: parse it, apply swaps, flatten it to weighted text per step fraction.

    a <cat> on a mat                         <name>: a stored embedding (never collides with a word)
    a (<cat>:1.2) with (red:0.8) stripes     (text:W): weight; (text) is ×1.1 and [text] ÷1.1, as in A1111
    a <0.6*red + 0.4*yellow>                 inline token-level blend of words and/or embeddings
    a <0.5*<cat> + 0.5*<dog>>                (weights as written; a bare operand weighs 1; '-' subtracts)
    a <1.3*<cat>>                            one operand: a scaled token
    a <slerp(<cat>, <dog>, 0.3)>             spherical blend, 0.3 of the way from <cat> to <dog>
    a [<cat>:<dog>:0.4] on a mat             prompt editing: <cat> for the first 40% of steps, then <dog>
    a [red:blue:5] circle                    ... a `when` of 1 or more is a step number
    a \\(literal\\) bracket                  backslash escapes ( ) [ ] < > : and \\ itself

`parse` gives a tuple of nodes (swaps.py makes a word stand for an embedding); flatten.py's `fragments`
flattens them to the (text, weight) runs compel weights for a fraction of the steps, its `schedule` says where
the text changes.
Compel never parses our text: its own syntax (`word+`, `"quoted"`, `.swap()`) would misread names and plain
punctuation, so a prompt means what this language says and nothing else. Tensors live in conditioning.py.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from embeddings.blend_expr import BlendSyntaxError, Operand
from embeddings.blend_expr import parse_blend as parse_blend_expression
from embeddings.errors import TokensmithError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NUMBER = re.compile(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*")
SPECIAL = "()[]<>:\\"
ESCAPE = re.compile(r"\\([()\[\]<>:\\])")  # \X for X in SPECIAL: the character X itself
PAREN_WEIGHT = 1.1  # A1111: (text) is ×1.1, [text] is ÷1.1
# Embeddings are installed under aliases <ts0>, <ts0>_1, ... (conditioning.py). Literal text spelled like one
# (`\<ts0\>`) gets a space after its '<': CLIP's tokenizer splits '<' off either way, so the text tokenizes
# as it would without the alias, and never as the installed token.
ALIAS_PREFIX = "ts"
ALIAS_SHAPED = re.compile(rf"<(?={ALIAS_PREFIX}\d+>)")


class PromptError(TokensmithError, ValueError):
    """A prompt that does not parse or names what does not exist; says where and what to do."""


# --- nodes ---


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class EmbeddingRef:
    name: str


@dataclass(frozen=True)
class Blend:
    """A token-level blend written inline; installed as a temporary embedding named `name`."""

    parts: tuple[tuple[float, Operand], ...]
    method: str  # "lerp" | "slerp"

    @property
    def name(self) -> str:
        return "blend-" + hashlib.sha256(self.expression.encode()).hexdigest()[:10]

    @property
    def expression(self) -> str:
        """A canonical spelling: `<0.6*red + 0.4*yellow>`, `<slerp(<cat>, <dog>, 0.3)>`."""
        spell = [f"<{o.text}>" if o.kind == "embedding" else _quote_word(o.text) for _w, o in self.parts]
        if self.method == "slerp":
            return f"<slerp({spell[0]}, {spell[1]}, {number_text(self.parts[1][0])})>"
        terms = (f"{number_text(w)}*{s}" for (w, _o), s in zip(self.parts, spell, strict=True))
        return "<" + " + ".join(terms) + ">"


@dataclass(frozen=True)
class Weighted:
    children: tuple
    weight: float


@dataclass(frozen=True)
class Edit:
    before: tuple
    after: tuple
    when: float  # < 1: fraction of the steps; >= 1: a step number


Node = Text | EmbeddingRef | Blend | Weighted | Edit


def number_text(x: float) -> str:
    """A number as the prompt language spells it: 1.2, 0.909091 (6 significant digits), 3."""
    return f"{x:g}"


def literal(text: str) -> str:
    """Source text with its escapes resolved: 'a \\(x\\) \\<y\\> 1\\:2' -> 'a (x) <y> 1:2'."""
    return ESCAPE.sub(r"\1", text)


def _quote_word(word: str) -> str:
    return word if re.fullmatch(r"[\w.-]+", word) else f"'{word}'"


# --- parsing ---


def parse(prompt: str) -> tuple[Node, ...]:
    """Parse the prompt language into nodes; PromptError points at the problem with a caret."""
    parser = _Parser(prompt)
    nodes = parser.sequence(stops="")
    if parser.pos != len(prompt):  # only an unmatched closer stops the top level
        parser.fail(f"unmatched {prompt[parser.pos]!r}: remove it or escape it as \\{prompt[parser.pos]}")
    return nodes


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, message: str, at: int | None = None) -> None:
        at = self.pos if at is None else at
        raise PromptError(f"{message} (at character {at + 1}: {self.text[:at]!r} ⟨here⟩ {self.text[at:]!r})")

    def sequence(self, stops: str) -> tuple[Node, ...]:
        nodes: list[Node] = []
        buf: list[str] = []

        def flush() -> None:
            if buf:
                nodes.append(Text("".join(buf)))
                buf.clear()

        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "\\" and self.pos + 1 < len(self.text) and self.text[self.pos + 1] in SPECIAL:
                buf.append("\\" + self.text[self.pos + 1])  # compel reads the same escapes
                self.pos += 2
            elif c in stops or c in ")]":
                break
            elif c == "<":
                flush()
                nodes.append(self.angle())
            elif c == "(":
                flush()
                nodes.append(self.paren())
            elif c == "[":
                flush()
                nodes.append(self.bracket())
            else:
                buf.append(c)
                self.pos += 1
        flush()
        return tuple(nodes)

    def angle(self) -> Node:
        start, depth = self.pos, 0
        for i in range(self.pos, len(self.text)):
            depth += {"<": 1, ">": -1}.get(self.text[i], 0)
            if depth == 0:
                inner = self.text[start + 1 : i].strip()
                self.pos = i + 1
                if NAME.fullmatch(inner):
                    return EmbeddingRef(inner)
                try:
                    return parse_blend(inner)
                except PromptError as exc:
                    self.fail(str(exc), at=start)
        self.fail("unclosed '<': write <name> for an embedding or <0.5*a + 0.5*b> for a blend", at=start)
        raise AssertionError  # unreachable: fail raises

    def paren(self) -> Node:
        start = self.pos
        self.pos += 1
        children = self.sequence(stops=":")
        if self.pos >= len(self.text):
            self.fail("unclosed '(': write (text:1.2) or escape it as \\(", at=start)
        if self.text[self.pos] == ")":
            self.pos += 1
            return Weighted(children, PAREN_WEIGHT)
        if self.text[self.pos] != ":":
            self.fail(f"expected ':' or ')' to close the '(' at character {start + 1}")
        weight = self.number(closer=")", what="a weight like (text:1.2)")
        if weight < 0:
            self.fail("a weight must be 0 or more: (text:0) leaves the text out, below 1 fades it", at=start)
        return Weighted(children, weight)

    def bracket(self) -> Node:
        start = self.pos
        self.pos += 1
        before = self.sequence(stops=":")
        if self.pos >= len(self.text):
            self.fail("unclosed '[': write [from:to:0.4] or escape it as \\[", at=start)
        if self.text[self.pos] == "]":
            if any(isinstance(n, Text) and "|" in n.text for n in before):
                self.fail(
                    "alternation [a|b] is not supported: write one of them, or use prompt editing "
                    "[a:b:0.5] to switch halfway",
                    at=start,
                )
            self.pos += 1
            return Weighted(before, 1 / PAREN_WEIGHT)
        if self.text[self.pos] != ":":
            self.fail("expected ':' in prompt editing [from:to:when]")
        self.pos += 1
        after = self.sequence(stops=":")
        if self.pos >= len(self.text) or self.text[self.pos] != ":":
            self.fail("prompt editing needs three parts: [from:to:when], e.g. [<cat>:<dog>:0.4]", at=start)
        when = self.number(closer="]", what="a step fraction or step number like [a:b:0.4]")
        if when < 0:
            self.fail("prompt editing 'when' must be 0 or more", at=start)
        return Edit(before, after, when)

    def number(self, *, closer: str, what: str) -> float:
        """Read ':NUMBER' followed by `closer`."""
        self.pos += 1  # the ':'
        end = self.text.find(closer, self.pos)
        if end < 0 or not NUMBER.fullmatch(self.text[self.pos : end]):
            self.fail(f"expected {what}")
        value = float(self.text[self.pos : end])
        self.pos = end + 1
        if not math.isfinite(value):
            self.fail(f"expected {what}")
        return value


def parse_blend(expr: str) -> Blend:
    """`0.6*red + 0.4*yellow`, `0.5*<cat> + 0.5*<dog>`, `slerp(<cat>, <dog>, 0.3)` -> Blend.

    The expression language is the embeddings core's (`tokensmith blend` reads the same); a bare operand
    weighs 1 and `-` subtracts. One operand is a scaled token: `<1.3*<cat>>`, `<-1*<cat>>`.
    """
    try:
        spec = parse_blend_expression(expr)
    except BlendSyntaxError as exc:
        raise PromptError(
            f"malformed blend <{expr}>: {exc}; write <0.6*word + 0.4*<name>> or <slerp(<a>, <b>, 0.3)>"
        ) from exc
    return Blend(tuple((float(w), o) for o, w in spec.parts), spec.method)


# --- what a prompt needs ---


def walk(nodes: tuple[Node, ...]):
    """Every node, depth first (both sides of an edit)."""
    for node in nodes:
        yield node
        if isinstance(node, Weighted):
            yield from walk(node.children)
        elif isinstance(node, Edit):
            yield from walk(node.before)
            yield from walk(node.after)


def embedding_names(nodes: tuple[Node, ...]) -> list[str]:
    """Stored embeddings a prompt uses, in first-use order (blend operands included)."""
    names: list[str] = []
    for node in walk(nodes):
        found = [node.name] if isinstance(node, EmbeddingRef) else []
        if isinstance(node, Blend):
            found = [o.text for _w, o in node.parts if o.kind == "embedding"]
        names.extend(n for n in found if n not in names)
    return names


def blends(nodes: tuple[Node, ...]) -> list[Blend]:
    """The inline blends of a prompt, each once, in the order they first appear (prompt editing included)."""
    found: list[Blend] = []
    for node in walk(nodes):
        if isinstance(node, Blend) and node not in found:
            found.append(node)
    return found


# --- spelling back ---


def to_text(nodes: tuple[Node, ...]) -> str:
    """Spell nodes back in the prompt language (how a swapped prompt reads)."""
    pieces = []
    for node in nodes:
        if isinstance(node, Text):
            pieces.append(node.text)
        elif isinstance(node, EmbeddingRef):
            pieces.append(f"<{node.name}>")
        elif isinstance(node, Blend):
            pieces.append(node.expression)
        elif isinstance(node, Weighted):
            pieces.append(f"({to_text(node.children)}:{number_text(node.weight)})")
        elif isinstance(node, Edit):
            pieces.append(f"[{to_text(node.before)}:{to_text(node.after)}:{number_text(node.when)}]")
    return "".join(pieces)
