"""A parsed prompt flattened for the encoder: `fragments`, the (text, weight) runs compel weights at a
fraction of the steps; `render`, the text it stands for there (what SDXL's pooled embedding reads); and
`schedule`, where prompt editing changes that text.
The language itself (its nodes and parser) is prompt.py."""

from __future__ import annotations

import re
from collections.abc import Callable

from studio.generation.prompt import (
    ALIAS_SHAPED,
    Blend,
    Edit,
    EmbeddingRef,
    Node,
    Text,
    Weighted,
    literal,
    number_text,
    walk,
)

Spell = Callable[[str], str]  # an embedding's (or inline blend's) name -> the tokens that stand for it


def _weight(x: float) -> float:
    """A weight as compel read it from `number_text`'s spelling (6 significant digits), so images made when
    compel parsed our text keep their exact weights: [text] is 0.909091, not 1/1.1."""
    return float(number_text(x))


def trigger(name: str) -> str:
    """How an embedding is spelled for the encoder unless a caller spells it otherwise: '<name>'."""
    return f"<{name}>"


def schedule(nodes: tuple[Node, ...], steps: int, spell: Spell = trigger) -> list[tuple[float, str]]:
    """[(start_fraction, text), ...]: where the prompt changes, with `render`'s text from each fraction on.

    'a [<cat>:<dog>:0.4]' with 10 steps -> [(0.0, 'a <cat>'), (0.4, 'a <dog>')].
    """
    cuts = sorted({_fraction(n.when, steps) for n in walk(nodes) if isinstance(n, Edit)} - {0.0})
    starts = [0.0] + [c for c in cuts if c < 1.0]
    out: list[tuple[float, str]] = []
    for start in starts:
        text = render(nodes, start, steps, spell)
        if not out or out[-1][1] != text:
            out.append((start, text))
    return out


def _fraction(when: float, steps: int) -> float:
    """A `when` as a fraction of the steps. The switch happens at the first step whose fraction of the steps
    (step / steps, counting from 0) is at least this: [a:b:0.25] over 10 steps is `a` for steps 0-2."""
    return when if when < 1 else min(when / max(steps, 1), 1.0)


def _side(node: Edit, at: float, steps: int) -> tuple[Node, ...]:
    return node.after if at >= _fraction(node.when, steps) else node.before


def render(nodes: tuple[Node, ...], at: float = 0.0, steps: int = 1, spell: Spell = trigger) -> str:
    """The prompt at step fraction `at` in compel's spelling: weights `(text)1.2`, embeddings `spell(name)`.

    Compel does not parse it (see `fragments`); it is the text SDXL's pooled embedding reads, spelled as when
    compel did parse it, so those images keep their pooled embedding: `\\(` and `\\)` stay escaped.
    """
    pieces = []
    for node in nodes:
        if isinstance(node, Text):
            pieces.append(re.sub(r"\\([\[\]<>:\\])", r"\1", node.text))
        elif isinstance(node, EmbeddingRef | Blend):
            pieces.append(spell(node.name))
        elif isinstance(node, Weighted):
            inner = render(node.children, at, steps, spell).strip()
            pieces.append(f"({inner}){number_text(node.weight)}" if inner else "")
        elif isinstance(node, Edit):
            pieces.append(render(_side(node, at, steps), at, steps, spell))
    return re.sub(r"[ \t]{2,}", " ", "".join(pieces))


def fragments(
    nodes: tuple[Node, ...], at: float = 0.0, steps: int = 1, spell: Spell = trigger
) -> list[tuple[str, float]]:
    """The (text, weight) runs compel weights at step fraction `at`, escapes resolved.

    'a (<cat>:1.2) on a [mat]' -> [('a', 1.0), ('<cat>', 1.2), ('on a', 1.0), ('mat', 0.909091)]

    We hand these to compel's weighting directly instead of letting it parse text: its syntax would read
    `<my--cat>` as a down-weight, `red+` as an up-weight, drop quotes, and glue `(red)1.1 3 circles`'s 3 onto
    the weight. The runs are the ones compel's parser made of the text `render` wrote whenever it read that
    text as meant, so those prompts encode exactly as before: nested weights multiply outside in, neighbours
    of equal weight fuse, and inside a weight ',' and '.' stand alone, as compel split them there.
    """
    stretches: list[tuple[str, float, bool]] = []
    _stretches(nodes, at, steps, spell, 1.0, False, stretches)
    runs: list[tuple[str, float]] = []
    for text, weight, weighted in stretches:
        text = re.sub(r"([,.])", r" \1 ", text) if weighted else re.sub(r",(\S)", r", \1", text)
        text = " ".join(text.split())
        if not text:
            continue
        if runs and runs[-1][1] == weight:
            runs[-1] = (runs[-1][0] + " " + text, weight)
        else:
            runs.append((text, weight))
    return runs or [("", 1.0)]


def _stretches(nodes, at, steps, spell, weight: float, weighted: bool, out: list) -> None:
    """Append (text, weight, inside a weight) for each stretch of text between weight brackets."""
    for node in nodes:
        if isinstance(node, Weighted):
            if render(node.children, at, steps, spell).strip():  # as `render`: an empty weight is nothing
                out.append(("", weight, weighted))  # a bracket ends the stretch before it
                _stretches(node.children, at, steps, spell, weight * _weight(node.weight), True, out)
                out.append(("", weight, weighted))
            continue
        if isinstance(node, Edit):
            _stretches(_side(node, at, steps), at, steps, spell, weight, weighted, out)
            continue
        if isinstance(node, EmbeddingRef | Blend):
            text = spell(node.name)
        else:
            text = ALIAS_SHAPED.sub("< ", literal(node.text))
        if out and out[-1][1:] == (weight, weighted) and out[-1][0]:
            out[-1] = (out[-1][0] + text, weight, weighted)  # same stretch: the text is contiguous
        else:
            out.append((text, weight, weighted))
