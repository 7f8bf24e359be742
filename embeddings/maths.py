"""Embedding maths at the token-embedding level: weighted blends (lerp, slerp), words as operands, nearest
vocabulary tokens and norm comparisons (the fast.ai "mix keyboard and typewriter" experiment, per encoder).

Vector-count rule for blends: the result has as many vectors as the longest operand; a shorter operand is
padded with zero vectors (as embedding-merge does), so at positions it lacks it contributes nothing.
"""

from __future__ import annotations

import json
import math
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
@dataclass(frozen=True)
class Neighbour:
    token: str
    token_id: int
    cosine: float


def _base_rows(tokenizer: Any, text_encoder: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and rows of the ordinary vocabulary (no special or added tokens)."""
    weight = text_encoder.get_input_embeddings().weight.detach().float().cpu()  # (vocab, width)
    excluded = set(tokenizer.get_added_vocab().values()) | set(getattr(tokenizer, "all_special_ids", []))
    ids = torch.tensor([i for i in range(weight.shape[0]) if i not in excluded])
    return ids, weight[ids]  # (V,), (V, width)


def nearest_tokens(
    vectors: torch.Tensor, tokenizer: Any, text_encoder: Any, k: int = 10
) -> list[list[Neighbour]]:
    """For each of the (n, width) vectors, the k ordinary vocabulary tokens with the highest cosine; none for
    an all-zero vector (a blend's zero padding), which has no direction to compare."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    ids, rows = _base_rows(tokenizer, text_encoder)
    if vectors.shape[1] != rows.shape[1]:
        raise EmbeddingFormatError(
            f"vectors of width {vectors.shape[1]} do not match a vocabulary of width {rows.shape[1]}"
        )
    unit_rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (V, width)
    unit = vectors.float() / vectors.float().norm(dim=1, keepdim=True).clamp_min(1e-12)  # (n, width)
    cosine = unit @ unit_rows.T  # (n, V)
    top = cosine.topk(min(k, rows.shape[0]), dim=1)
    out = []
    for vector, values, positions in zip(vectors, top.values, top.indices, strict=True):
        if not vector.any():
            out.append([])
            continue
        token_ids = [int(ids[p]) for p in positions]
        out.append(
            [
                Neighbour(_display(tokenizer, t), t, round(float(v), 4))
                for t, v in zip(token_ids, values, strict=True)
            ]
        )
    return out


def _display(tokenizer: Any, token_id: int) -> str:
    text = tokenizer.decode([token_id]).strip()
    return text or tokenizer.convert_ids_to_tokens(token_id)


def norm_report(vectors: torch.Tensor, tokenizer: Any, text_encoder: Any) -> dict:
    """The vectors' norms next to the vocabulary's (mean, std, min, max); each norm / the mean."""
    _ids, rows = _base_rows(tokenizer, text_encoder)
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
