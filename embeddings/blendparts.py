"""A blend's operands made into the (Embedding, weight) parts `maths.blend` mixes: the one rule that
`tokensmith blend` and the studio's Blend page both follow.

- `<cat>` is the stored embedding a prompt's <cat> finds (letter case aside: it finds a stored 'Cat').
- A bare word is its token embedding in the model, and must be one token of the model's vocabulary: a word
  the model does not know is split into pieces ('keyboard' -> k, e, y, bo, a, r, d), and a blend of those is
  of letter fragments, not of the word. A quoted phrase ('red car') is all its tokens, on purpose.
- With a model, a stored embedding made for another one (other widths) is refused by its own name before
  anything is blended, rather than as a misfit of the result.

Errors are raised here and worded for the user by each door (the page says "type it in its field in quotes"
where the CLI says "quote it"); the tokens of each word come back as data, for the CLI to print on stderr.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from embeddings.blend_expr import TOKEN, BlendSpec, Operand
from embeddings.errors import TokensmithError
from embeddings.inject import encoder_width, model_advice
from embeddings.maths import word_operand
from embeddings.value import Embedding

# CLIP's BPE marks the piece that ends a word; a piece is shown without it ('red</w>' -> 'red')
END_OF_WORD = "</w>"


class BlendOperandError(TokensmithError, ValueError):
    """An operand that cannot go into the blend; the message names it ("cannot blend operand #2 <dog>: ...").

    `index` counts from 1, `label` is the operand as written ('<dog>', '"red"') and `reason` the message's
    part after the operand, for a door that words it its own way."""

    def __init__(self, index: int, label: str, reason: str):
        super().__init__(f"cannot blend operand #{index} {label}: {reason}")
        self.index, self.label, self.reason = index, label, reason


class SplitWordError(TokensmithError, ValueError):
    """A bare word that is not one token of the model's vocabulary (`word` says into what it splits).

    `operand` is the operand's text (the word, or the unquoted phrase it is in): quoting that blends its
    pieces on purpose. The message is the CLI's; `split_word_text(..., quote=...)` words it for a page."""

    def __init__(self, word: WordTokens, operand: str):
        super().__init__(split_word_text(word, operand))
        self.word, self.operand = word, operand


@dataclass(frozen=True)
class WordTokens:
    """How a model's tokenizer reads one word or phrase: its pieces, and whether any is the unknown token."""

    text: str
    pieces: tuple[str, ...]
    unknown: bool = False

    @property
    def whole(self) -> bool:
        """True when the tokenizer knows it as one token (a word the blend can mix as a word)."""
        return len(self.pieces) == 1 and not self.unknown

    def line(self) -> str:
        """ "'red' -> red (1 token)", "'keyboard' -> k, e, y, bo, a, r, d (7 tokens)"."""
        count = len(self.pieces)
        return f"{self.text!r} -> {', '.join(self.pieces)} ({count} token{'s' * (count != 1)})"


def word_tokens(text: str, tokenizer: Any) -> WordTokens:
    """The pieces `tokenizer` (a transformers tokenizer, duck-typed) cuts `text` into, without special
    tokens: word_tokens('red', tok) -> WordTokens('red', ('red',))."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    pieces = tuple(piece.replace(END_OF_WORD, "") for piece in tokenizer.convert_ids_to_tokens(ids))
    return WordTokens(text, pieces, unknown=tokenizer.unk_token_id in ids)


def split_word_text(word: WordTokens, operand: str, *, quote: str = "quote it") -> str:
    """Why a bare word is refused, and the two ways on; `quote` is how the door says to quote `operand`.

    "'zebra' is not a word of this model's vocabulary: it splits into 5 pieces (z, e, b, r, a), so the blend
    would mix those fragments, not the word; use a word the model knows as one token, or quote it ('zebra')
    to blend its pieces on purpose"."""
    if len(word.pieces) > 1:
        how = (
            f"it splits into {len(word.pieces)} pieces ({', '.join(word.pieces)}), so the blend would mix "
            "those fragments"
        )
    elif word.pieces:
        how = "it reads as the unknown token, so the blend would mix that"
    else:
        how = "the model reads no token in it, so the blend would have nothing"
    return (
        f"{word.text!r} is not a word of this model's vocabulary: {how}, not the word; use a word the model "
        f"knows as one token, or {quote} ('{operand}') to blend its pieces on purpose"
    )


def bare_words(expr: str) -> frozenset[str]:
    """The words a blend expression writes without quotes (the ones that must be one token each):
    bare_words("0.5*red + 0.5*'red car'") -> {'red'}."""
    return frozenset(match.group("word") for match in TOKEN.finditer(expr) if match.group("word"))


def word_texts(spec: BlendSpec) -> list[str]:
    """The spec's word and phrase operands, each once, in order."""
    return list(dict.fromkeys(operand.text for operand, _ in spec.parts if operand.kind == "word"))


def operand_label(operand: Operand) -> str:
    """How an operand is named in messages and labels: '<cat>' for a stored one, '"red"' for a word."""
    return f"<{operand.text}>" if operand.kind == "embedding" else f'"{operand.text}"'


def resolve_operands(
    spec: BlendSpec,
    store: Any,
    encoders: Sequence[tuple[str, Any, Any]] | None = None,
    *,
    model_family: str | None = None,
    bare: Collection[str] = (),
) -> list[tuple[Embedding, float]]:
    """The (Embedding, weight) parts of `spec`, operand by operand.

    `encoders` are the model's (key, tokenizer, text_encoder): words need them, and with them a stored
    embedding of other widths is refused (BlendOperandError; `model_family`, the LoadedModel's, adds which
    model to use instead). Every word of an operand in `bare` (written without quotes) must be one token of
    the first tokenizer, else SplitWordError. A stored operand that does not load is a BlendOperandError
    naming it."""
    widths = None if encoders is None else {key: encoder_width(te) for key, _tok, te in encoders}
    parts = []
    for index, (operand, weight) in enumerate(spec.parts, start=1):
        if operand.kind == "embedding":
            parts.append((_stored(store, operand, index, widths, model_family), weight))
            continue
        if encoders is None:
            raise BlendOperandError(
                index, operand_label(operand), "a word needs a model's tokenizer, and no model is loaded"
            )
        if operand.text in bare:
            _check_words(operand.text, encoders[0][1])
        parts.append((word_operand(operand.text, encoders), weight))
    return parts


def _check_words(text: str, tokenizer: Any) -> None:
    """SplitWordError for the first word of `text` that is not one token of the vocabulary."""
    for word in re.split(r"\s+", text.strip()):
        tokens = word_tokens(word, tokenizer)
        if not tokens.whole:
            raise SplitWordError(tokens, text)


def _stored(
    store: Any, operand: Operand, index: int, widths: dict[str, int] | None, model_family: str | None
) -> Embedding:
    """The stored embedding of operand #index, found as a prompt finds it; one that does not load, or (with
    the model's `widths`) that was made for another model, is refused naming the operand."""
    from embeddings.doctor import widths_text  # doctor imports most of the core: only when one is refused

    label = operand_label(operand)
    try:
        emb = store.get(store.resolve(operand.text))
    except (TokensmithError, KeyError, ValueError, OSError) as exc:
        reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        raise BlendOperandError(index, label, reason) from exc
    if widths is None or emb.widths == widths:
        return emb
    advice = model_advice(emb, model_family) if model_family else ""  # which --model it was made for
    reason = (
        f"it has {widths_text(emb.widths)} but this model's text encoder has {widths_text(widths)} (it was "
        "made for another model); use one made for this model, or a word" + (f"; {advice}" if advice else "")
    )
    raise BlendOperandError(index, label, reason)
