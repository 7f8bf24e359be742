"""Swaps: `--swap WORD=<name>` makes a word stand for an embedding (or another word) without editing the
prompt, in the prompt, the negative prompt and blend operands; the nodes come out as if `<name>` had been
written in the word's place."""

from __future__ import annotations

import re

from embeddings.blend_expr import Operand
from studio.generation.prompt import (
    NAME,
    SPECIAL,
    Blend,
    Edit,
    EmbeddingRef,
    Node,
    PromptError,
    Text,
    Weighted,
    blends,
)


def parse_swap(spec: str) -> tuple[str, str]:
    """'puppy=<cat>' -> ('puppy', '<cat>'); 'puppy=kitten' swaps in a word."""
    word, sep, target = spec.partition("=")
    word, target = word.strip(), target.strip()
    if not sep or not word or not target or any(c in word for c in SPECIAL):
        raise PromptError(f"malformed --swap {spec!r}: write WORD=<name> (e.g. --swap puppy=<my-dog>)")
    if target.startswith("<") and not (target.endswith(">") and NAME.fullmatch(target[1:-1])):
        raise PromptError(f"malformed --swap {spec!r}: the embedding must be written <name>")
    if any(c.isspace() for c in word):
        raise PromptError(f"malformed --swap {spec!r}: a swap replaces one word; {word!r} has a space")
    return word, target


def apply_swaps(nodes: tuple[Node, ...], swaps: dict[str, str]) -> tuple[Node, ...]:
    """Make each swapped word stand for its target everywhere (text and blend operands), case-insensitively.

    The result is exactly the nodes of the prompt with `<name>` written in place of the word.
    """
    if not swaps:
        return nodes
    out: list[Node] = []
    for node in nodes:
        if isinstance(node, Text):
            out.extend(_swap_text(node.text, swaps))
        elif isinstance(node, Weighted):
            out.append(Weighted(apply_swaps(node.children, swaps), node.weight))
        elif isinstance(node, Edit):
            out.append(Edit(apply_swaps(node.before, swaps), apply_swaps(node.after, swaps), node.when))
        elif isinstance(node, Blend):
            out.append(Blend(tuple((w, _swap_operand(o, swaps)) for w, o in node.parts), node.method))
        else:
            out.append(node)
    return tuple(out)


def unmatched_swaps(swaps: dict[str, str], *prompts: tuple[Node, ...]) -> list[str]:
    """The swap words that occur in none of `prompts` (a swap that would silently do nothing).

    A word found only inside a quoted blend phrase (`<0.5*'red puppy' + ...>`) is a PromptError that says so:
    a swap replaces a whole blend operand, and a phrase's words are one operand.
    """
    unmatched = [
        word for word in swaps if all(apply_swaps(nodes, {word: swaps[word]}) == nodes for nodes in prompts)
    ]
    for word in unmatched:
        inside = re.compile(rf"(?<![\w<]){re.escape(word)}(?![\w>])", re.I)
        for nodes in prompts:
            for blend in blends(nodes):
                for _w, operand in blend.parts:
                    if operand.kind == "word" and " " in operand.text and inside.search(operand.text):
                        raise PromptError(
                            f"swap {word!r} is a word of the quoted blend phrase {operand.text!r}: a swap "
                            f"replaces a whole blend operand; write <name> in the phrase's place, or make "
                            f"{word!r} an operand of its own"
                        )
    return unmatched


def _swap_target(target: str) -> Node:
    return EmbeddingRef(target[1:-1]) if target.startswith("<") else Text(target)


def _swap_text(text: str, swaps: dict[str, str]) -> list[Node]:
    pattern = re.compile(r"(?<![\w<])(" + "|".join(re.escape(w) for w in swaps) + r")(?![\w>])", re.I)
    lowered = {w.lower(): t for w, t in swaps.items()}
    out: list[Node] = []
    last = 0
    for match in pattern.finditer(text):
        if match.start() > last:
            out.append(Text(text[last : match.start()]))
        out.append(_swap_target(lowered[match.group(1).lower()]))
        last = match.end()
    if last < len(text):
        out.append(Text(text[last:]))
    return out


def _swap_operand(operand: Operand, swaps: dict[str, str]) -> Operand:
    target = (
        {w.lower(): t for w, t in swaps.items()}.get(operand.text.lower()) if operand.kind == "word" else None
    )
    if target is None:
        return operand
    return Operand("embedding", target[1:-1]) if target.startswith("<") else Operand("word", target)
