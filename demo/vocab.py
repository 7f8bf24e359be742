"""A tiny CLIP-style BPE vocabulary: characters plus whole caption words, for transformers' `CLIPTokenizer`.

Every caption word becomes one token (`word</w>`); any other word still tokenizes, as characters. BPE applies
merges by global rank, so one word's merge chain can break another word (the `a n` merge fires inside
"triangle"); a repair pass appends merges that join whatever pieces a word still comes out in.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CHARACTERS = string.ascii_lowercase + string.digits + "!\"#$%&'()*+,-./:;=?@[\\]^_`{|}~<>"
MAX_LENGTH = 32  # token positions, BOS and EOS included


def _chain(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that build `word</w>` from its characters."""
    pieces = [*word[:-1], word[-1] + "</w>"]
    merges, current = [], pieces[0]
    for piece in pieces[1:]:
        merges.append((current, piece))
        current += piece
    return merges


def _tokenizer(merges: list[tuple[str, str]]):
    from transformers import CLIPTokenizer

    tokens = [*CHARACTERS, *(c + "</w>" for c in CHARACTERS)]
    tokens += [a + b for a, b in merges]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(
        vocab=vocab,
        merges=list(merges),
        model_max_length=MAX_LENGTH,
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
    )


def build_tokenizer(words: Iterable[str]):
    """A `CLIPTokenizer` in which every word of `words` is a single token; raises if repair fails."""
    words = sorted({w.lower() for w in words})
    merges: list[tuple[str, str]] = []
    for word in words:
        merges += [m for m in _chain(word) if m not in merges]
    for _ in range(4):
        tokenizer = _tokenizer(merges)
        broken = {w: tokenizer.tokenize(w) for w in words}
        broken = {w: pieces for w, pieces in broken.items() if pieces != [w + "</w>"]}
        if not broken:
            return tokenizer
        for pieces in broken.values():  # appended last: lowest priority, so it only ever joins
            current = pieces[0]
            for piece in pieces[1:]:
                if (current, piece) not in merges:
                    merges.append((current, piece))
                current += piece
    raise RuntimeError(f"BPE repair did not converge for {sorted(broken)}")
