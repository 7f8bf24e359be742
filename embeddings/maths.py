"""Embedding maths at the token-embedding level: weighted blends (lerp, slerp), words as operands, nearest
vocabulary tokens and norm comparisons (the fast.ai "mix keyboard and typewriter" experiment, per encoder).

Vector-count rule for blends: the result has as many vectors as the longest operand; a shorter operand is
padded with zero vectors (as embedding-merge does), so at positions it lacks it contributes nothing.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from embeddings.canonical import now_iso
from embeddings.errors import EmbeddingFormatError
from embeddings.inject import word_vectors
from embeddings.value import MAX_VECTORS, Embedding, family_title

METHODS = ("lerp", "slerp")
WORD_KIND = "word"
# 2: slerp turns the direction t·Ω of the way and interpolates the norms linearly. 1: the first slerp, which
# weighted the raw vectors by sin((1-t)Ω)/sin Ω and sin(tΩ)/sin Ω (right only for equal norms); kept so that
# images made with it replay identically (provenance records the version).
SLERP_VERSION = 2


# --- operands ---
def word_operand(text: str, encoders: Sequence[tuple[str, Any, Any]]) -> Embedding:
    """A word or phrase as an operand: its input token embeddings in each encoder ('keyboard' -> 1 vector)."""
    vectors = {key: word_vectors(text, tok, te) for key, tok, te in encoders}  # key -> (tokens, width)
    counts = {v.shape[0] for v in vectors.values()}
    if len(counts) > 1:
        raise EmbeddingFormatError(
            f"{text!r} has a different token count in each tokenizer; blend single words"
        )
    return Embedding(text, vectors, {"operand": WORD_KIND})


def _padded(tensor: torch.Tensor, n: int) -> torch.Tensor:
    if tensor.shape[0] >= n:
        return tensor[:n]
    return torch.cat([tensor, tensor.new_zeros(n - tensor.shape[0], tensor.shape[1])])  # (n, width)


def _check_compatible(parts: Sequence[tuple[Embedding, float]]) -> None:
    if not parts:
        raise EmbeddingFormatError("a blend needs at least one operand")
    first = parts[0][0]
    for emb, weight in parts:
        if not isinstance(weight, int | float) or not math.isfinite(weight):
            raise EmbeddingFormatError(f"the weight of '{emb.name}' is not a finite number: {weight!r}")
        if emb.widths != first.widths:
            raise EmbeddingFormatError(
                f"cannot blend '{first.name}' ({family_title(first.family)}, widths {first.widths}) with "
                f"'{emb.name}' ({family_title(emb.family)}, widths {emb.widths}): different models"
            )


# --- blending ---
def _arc_weights(a_unit: torch.Tensor, b_unit: torch.Tensor, t: float):
    """sin((1-t)Ω)/sin Ω and sin(tΩ)/sin Ω per row of unit (n, d) tensors, and where Ω is ~0 or ~π."""
    cos = (a_unit * b_unit).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)  # (n, 1)
    omega = torch.arccos(cos)  # (n, 1)
    sin = torch.sin(omega)
    near = sin.abs() < 1e-6
    safe_sin = torch.where(near, torch.ones_like(sin), sin)
    wa = torch.where(near, torch.full_like(sin, 1 - t), torch.sin((1 - t) * omega) / safe_sin)
    wb = torch.where(near, torch.full_like(sin, t), torch.sin(t * omega) / safe_sin)
    return wa, wb, near  # (n, 1) each


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, *, version: int = SLERP_VERSION) -> torch.Tensor:
    """Spherical interpolation row by row between (n, d) tensors: the direction turns t·Ω from a's toward
    b's and the norm goes linearly from |a| to |b|. Rows that are (nearly) aligned or opposite, or where one
    side is zero (a shorter operand's padding), use lerp: (1-t)·a + t·b. `version=1` is the first slerp."""
    a_norm, b_norm = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)  # (n, 1)
    a_unit, b_unit = a / a_norm.clamp_min(1e-12), b / b_norm.clamp_min(1e-12)  # (n, d)
    wa, wb, near = _arc_weights(a_unit, b_unit, t)
    if version == 1:
        return wa * a + wb * b  # (n, d)
    direction = wa * a_unit + wb * b_unit  # (n, d), unit length
    norm = (1 - t) * a_norm + t * b_norm  # (n, 1)
    lerp = near | (a_norm == 0) | (b_norm == 0)  # (n, 1)
    return torch.where(lerp, (1 - t) * a + t * b, direction * norm)  # (n, d)


def blend(
    parts: Sequence[tuple[Embedding, float]],
    name: str,
    *,
    method: str = "lerp",
    keep_norm: bool = False,
    num_vectors: int | None = None,
    slerp_version: int = SLERP_VERSION,
) -> Embedding:
    """A new embedding from weighted operands, per encoder key; lineage recorded in meta["parent"].

    lerp: Σ wᵢ·vᵢ (weights as given: 0.5*<cat> + 0.5*<dog>). slerp: exactly two operands, t = w₂/(w₁+w₂)
    (slerp(<cat>, <dog>, 0.3) is parts [(cat, 0.7), (dog, 0.3)]). keep_norm rescales every result vector to
    the |w|-weighted mean norm of the operand vectors present at that position (blends otherwise shrink).
    num_vectors crops (or zero-pads) the result to that many vectors; by default it has as many as the
    longest operand. slerp_version 1 is the first slerp (see SLERP_VERSION), for replaying old images.
    """
    if method not in METHODS:
        raise EmbeddingFormatError(f"unknown blend method {method!r}; use lerp or slerp")
    _check_compatible(parts)
    n = max(emb.num_vectors for emb, _ in parts) if num_vectors is None else num_vectors
    if not 1 <= n <= MAX_VECTORS:
        raise EmbeddingFormatError(f"a blend needs 1..{MAX_VECTORS} vectors, not {n}")
    vectors = {}
    for key in parts[0][0].vectors:
        stack = torch.stack([_padded(emb.vectors[key], n) for emb, _ in parts])  # (parts, n, width)
        weights = torch.tensor([float(w) for _, w in parts])  # (parts,)
        if method == "slerp":
            if len(parts) != 2 or float(weights.sum()) == 0:
                raise EmbeddingFormatError("slerp blends exactly two operands whose weights do not sum to 0")
            t = float(weights[1] / weights.sum())
            mixed = slerp(stack[0], stack[1], t, version=slerp_version)  # (n, width)
        else:
            mixed = (weights[:, None, None] * stack).sum(dim=0)  # (n, width)
        if keep_norm:  # mean over the operands that have a vector at each position (padding excluded)
            present = torch.stack(
                [torch.arange(n) < emb.num_vectors for emb, _ in parts]
            ).float()  # (parts, n)
            share = weights.abs()[:, None] * present  # (parts, n)
            target = (share * stack.norm(dim=2)).sum(0) / share.sum(0).clamp_min(1e-12)  # (n,)
            mixed = mixed * (target / mixed.norm(dim=1).clamp_min(1e-12))[:, None]  # (n, width)
        if not torch.isfinite(mixed).all():
            raise EmbeddingFormatError(
                f"the blend overflows float32 ({key}): its weights are too large; use weights near 1"
            )
        vectors[key] = mixed
    meta = _lineage_meta(parts, method, keep_norm, num_vectors)
    return Embedding(name, vectors, meta)


def labelled_with_vocabulary(
    result: Embedding, parts: Sequence[tuple[Embedding, float]], *, base_model: str, family: str
) -> Embedding:
    """The blend `result` of `parts` labelled with the model whose vocabulary gave its word operands their
    vectors (its `base_model` and `family`) when any operand is a word: a blend of the demo world's words is
    'demo', not the 'w64' its width alone would say. A blend of stored embeddings only keeps their labels."""
    if not any(emb.meta.get("operand") == WORD_KIND for emb, _ in parts):
        return result
    return result.with_meta(base_model=base_model, family=family)


def _lineage_meta(
    parts: Sequence[tuple[Embedding, float]], method: str, keep_norm: bool, num_vectors: int | None
) -> dict[str, str]:
    operands = [
        {
            "name": emb.name,
            "kind": emb.meta.get("operand", "embedding"),
            "weight": float(weight),
            "sha256": emb.sha256,
        }
        for emb, weight in parts
    ]
    meta = {
        "parent": json.dumps(
            {"method": method, "keep_norm": keep_norm, "num_vectors": num_vectors, "operands": operands}
        ),
        "created": now_iso(),
        "init": " + ".join(f"{w:g}*{e.name}" for e, w in parts),
    }
    families = {emb.meta.get("family") for emb, _ in parts if emb.meta.get("operand") != WORD_KIND}
    if len(families) == 1 and None not in families:
        meta["family"] = families.pop()
    bases = {emb.meta.get("base_model") for emb, _ in parts if emb.meta.get("operand") != WORD_KIND}
    if len(bases) == 1 and None not in bases:
        meta["base_model"] = bases.pop()
    return meta


# --- looking at vectors ---
END_OF_WORD = "</w>"  # CLIP's BPE marks a word's last piece: 'cat</w>' is the word, 'ca' only starts one
PIECE_MARK = "…"  # shown after a piece that a word goes on from: 'squar…' ('squar' + 'e</w>'), 'c…' vs 'c'


@dataclass(frozen=True)
class Neighbour:
    """A vocabulary token near a vector: `token` is its decoded text (a control byte as is; 'c' for both the
    piece and the word c), `label` how to show it (printable, unique among the tokens shown: token_labels)."""

    token: str
    token_id: int
    cosine: float
    label: str


def _base_rows(tokenizer: Any, text_encoder: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Ids, rows and token strings of the ordinary vocabulary: no special or added tokens, and no rows the
    tokenizer has no token for (an encoder padded or resized past its tokenizer: no prompt reaches them)."""
    weight = text_encoder.get_input_embeddings().weight.detach().float().cpu()  # (vocab, width)
    excluded = set(tokenizer.get_added_vocab().values()) | set(getattr(tokenizer, "all_special_ids", []))
    pieces = tokenizer.convert_ids_to_tokens(list(range(weight.shape[0])))  # None past the tokenizer's end
    kept = [i for i, piece in enumerate(pieces) if piece is not None and i not in excluded]
    ids = torch.tensor(kept, dtype=torch.long)
    return ids, weight[ids], [pieces[i] for i in kept]  # (V,), (V, width), V strings


def nearest_tokens(
    vectors: torch.Tensor, tokenizer: Any, text_encoder: Any, k: int = 10
) -> list[list[Neighbour]]:
    """For each of the (n, width) vectors, the k ordinary vocabulary tokens with the highest cosine (equal
    cosines, to the 4 places reported, in token id order); none for an all-zero vector (a blend's zero
    padding), which has no direction to compare. Labels are unique across all the rows returned."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    ids, rows, pieces = _base_rows(tokenizer, text_encoder)
    if vectors.shape[1] != rows.shape[1]:
        raise EmbeddingFormatError(
            f"vectors of width {vectors.shape[1]} do not match a vocabulary of width {rows.shape[1]}"
        )
    unit_rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (V, width)
    unit = vectors.float() / vectors.float().norm(dim=1, keepdim=True).clamp_min(1e-12)  # (n, width)
    cosine = torch.round(unit @ unit_rows.T, decimals=4)  # (n, V), as reported
    # a stable sort keeps ties in vocabulary order (ids ascend), where topk's order among them is unspecified
    order = cosine.sort(dim=1, descending=True, stable=True).indices[:, :k]  # (n, min(k, V))
    found = [positions.tolist() if v.any() else [] for v, positions in zip(vectors, order, strict=True)]
    shown = sorted({p for row in found for p in row})  # positions in `ids`
    labels = token_labels(tokenizer, [int(ids[p]) for p in shown], [pieces[p] for p in shown], pieces)
    return [
        [_neighbour(tokenizer, int(ids[p]), float(cosine[i, p]), labels) for p in row]
        for i, row in enumerate(found)
    ]


def _neighbour(tokenizer: Any, token_id: int, cosine: float, labels: dict[int, str]) -> Neighbour:
    return Neighbour(_display(tokenizer, token_id), token_id, round(cosine, 4), labels[token_id])


def _display(tokenizer: Any, token_id: int) -> str:
    text = tokenizer.decode([token_id]).strip()
    return text or tokenizer.convert_ids_to_tokens(token_id)


def token_labels(
    tokenizer: Any, token_ids: Sequence[int], pieces: Sequence[str], vocabulary: Sequence[str]
) -> dict[int, str]:
    """How to show each token (id -> label) so that none garbles a terminal and no two look alike: a word's
    last piece as the word ('c</w>' -> 'c'), a piece a word goes on from marked ('c' -> 'c…') when the
    `vocabulary` (its token strings) marks word ends at all, a control byte or a lone byte of a UTF-8
    character escaped ('\\x07', '\\xc8'), and '#id' after labels that are still equal ('c#99')."""
    marks_ends = any(piece.endswith(END_OF_WORD) for piece in vocabulary)
    labels = {}
    for token_id, piece in zip(token_ids, pieces, strict=True):
        word = piece.removesuffix(END_OF_WORD)
        label = _printable(tokenizer.decode([token_id]).strip(), word) or f"#{token_id}"
        labels[token_id] = label + PIECE_MARK if marks_ends and word == piece else label
    counts = Counter(labels.values())
    return {i: f"{label}#{i}" if counts[label] > 1 else label for i, label in labels.items()}


def _shows_as_itself(char: str) -> bool:
    return char.isprintable() and not char.isspace() and char != "\ufffd"  # U+FFFD: bytes that were lost


def _printable(text: str, symbol: str) -> str:
    """`text` if every character shows as itself; else the bytes the byte-level BPE `symbol` stands for
    (CLIP's 'ć' is the byte 7, 'È' the byte 0xc8, half of a UTF-8 character), with those that are not
    printable text escaped: '\\x07', '\\xc8'. A symbol outside that alphabet: `text` escaped."""
    if text and all(_shows_as_itself(c) for c in text):
        return text
    byte_of = _byte_values()
    if symbol and all(c in byte_of for c in symbol):
        text = bytes(byte_of[c] for c in symbol).decode("utf-8", errors="backslashreplace")
    return "".join(c if _shows_as_itself(c) else _escaped(c) for c in text)


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


@functools.cache
def _byte_values() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2, CLIP): the character that stands for each byte -> the byte. Printable
    Latin-1 bytes stand for themselves, the others (controls, space, ...) for characters from U+0100 on."""
    kept = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    extra = iter(range(0x100, 0x200))
    return {(chr(b) if b in kept else chr(next(extra))): b for b in range(256)}


def norm_report(vectors: torch.Tensor, tokenizer: Any, text_encoder: Any) -> dict:
    """The vectors' norms next to the vocabulary's (mean, std, min, max); each norm / the mean."""
    _ids, rows, _pieces = _base_rows(tokenizer, text_encoder)
    vocab = rows.norm(dim=1)  # (V,)
    norms = vectors.float().norm(dim=1)  # (n,)
    mean = float(vocab.mean())
    return {
        "norms": [round(float(x), 4) for x in norms],
        "vocab": {
            "mean": round(mean, 4),
            "std": round(float(vocab.std()), 4),
            "min": round(float(vocab.min()), 4),
            "max": round(float(vocab.max()), 4),
        },
        "ratio_to_vocab_mean": [round(float(x) / mean, 3) if mean else None for x in norms],
    }
