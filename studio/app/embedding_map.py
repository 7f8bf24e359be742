"""The Inspect page's 2-D map: library embeddings and chosen words placed by PCA of their mean vectors in the
model's first text encoder (a picture of where concepts sit, not a measurement)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class MapPoint:
    name: str
    kind: str  # "embedding" | "word"
    x: float
    y: float


def project_2d(rows: torch.Tensor) -> torch.Tensor:
    """(N, width) -> (N, 2) coordinates on the two principal axes (sign fixed so the picture is stable)."""
    centred = rows - rows.mean(dim=0, keepdim=True)  # (N, width)
    if rows.shape[0] < 2:
        return torch.zeros(rows.shape[0], 2)
    _u, _s, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(N, width), width)
    axes = vh[:2]  # (≤2, width)
    signs = torch.sign(axes.sum(dim=1, keepdim=True)).clamp_min(0) * 2 - 1  # (≤2, 1): a stable orientation
    coords = centred @ (axes * signs).T  # (N, ≤2)
    if coords.shape[1] < 2:
        coords = torch.cat([coords, torch.zeros(coords.shape[0], 2 - coords.shape[1])], dim=1)
    return coords  # (N, 2)


def map_points(
    embeddings: list[Any], words: list[str], encoders: list, *, model_family: str | None = None
) -> tuple[list[MapPoint], list[str]]:
    """Points for every embedding that fits the model and every word; plus notes on what was left out
    (`model_family` names the model in them: "the demo world", not "width 64")."""
    from embeddings import vectors_for_encoders, word_vectors
    from embeddings.errors import TokensmithError

    _key, tokenizer, text_encoder = encoders[0]
    names, kinds, rows, skipped = [], [], [], []
    for emb in embeddings:
        try:
            vectors = vectors_for_encoders(emb, encoders, model_family=model_family)[0]  # (n, width)
        except TokensmithError as exc:
            skipped.append(f"<{emb.name}>: {exc}")
            continue
        names.append(emb.name)
        kinds.append("embedding")
        rows.append(vectors.float().mean(dim=0))  # (width,)
    for word in words:
        try:
            vectors = word_vectors(word, tokenizer, text_encoder)  # (tokens, width)
        except TokensmithError as exc:
            skipped.append(f'"{word}": {exc}')
            continue
        names.append(word)
        kinds.append("word")
        rows.append(vectors.detach().float().mean(dim=0))  # (width,)
    if not rows:
        return [], skipped
    coords = project_2d(torch.stack(rows))  # (N, 2)
    points = [
        MapPoint(n, k, round(float(x), 5), round(float(y), 5))
        for n, k, (x, y) in zip(names, kinds, coords.tolist(), strict=True)
    ]
    return points, skipped
