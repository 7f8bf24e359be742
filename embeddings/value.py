"""The embedding value: vectors per text encoder standing in for `<name>` in a prompt, string metadata."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from embeddings.errors import EmbeddingFormatError

if TYPE_CHECKING:  # torch loads where tensors are made or read, so header-only commands (list) skip its ~1 s
    import torch

# Encoder keys of the canonical file (DESIGN.md): one encoder, or one key per encoder (SDXL).
SINGLE_KEY = "emb_params"
SDXL_KEYS = ("clip_l", "clip_g")
ENCODER_KEYS = (SINGLE_KEY, "clip_l", "clip_g", "t5xxl")

# Family from the encoders' widths; anything else is kept and labelled by its width ("w64").
FAMILY_BY_WIDTHS = {
    ((SINGLE_KEY, 768),): "sd1",
    ((SINGLE_KEY, 1024),): "sd2",
    (("clip_g", 1280), ("clip_l", 768)): "sdxl",
}
FAMILY_TITLES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "demo": "the demo world"}

# Sizes past these are not embeddings (a whole model, a corrupted header): refused with a clear error.
MAX_VECTORS = 1024
MAX_WIDTH = 16384


def family_from_widths(widths: dict[str, int]) -> str:
    """'sd1' for {emb_params: 768}, 'sd2' for 1024, 'sdxl' for clip_l + clip_g, else e.g. 'w64'.

    The clip_l + clip_g key layout is SDXL's whatever its widths (a tiny test pipeline, an SDXL derivative
    with other encoders): the model trains and injects those keys exactly as SDXL does. Other layouts are
    named by their widths in encoder order ('w32+48' for clip_l 32 + t5xxl 48).
    """
    known = FAMILY_BY_WIDTHS.get(tuple(sorted(widths.items())))
    if known:
        return known
    if sorted(widths) == sorted(SDXL_KEYS):
        return "sdxl"
    order = sorted(sorted(widths), key=lambda k: (*ENCODER_KEYS, k).index(k))  # clip_l first, as displayed
    return "w" + "+".join(str(widths[k]) for k in order)


def family_claim_fits(family: str, widths: dict[str, int]) -> bool:
    """Whether a foreign file's own `family` label can stand for these widths: the family its widths name
    (sd1, sd2, or sdxl for any clip_l + clip_g pair), or, for widths no SD family has, a known family that no
    width names (the demo world)."""
    inferred = family_from_widths(widths)
    if family == inferred:
        return True
    named_by_width = set(FAMILY_BY_WIDTHS.values())
    return family in FAMILY_TITLES and family not in named_by_width and inferred not in named_by_width


def family_title(family: str) -> str:
    """A family label for people: 'sd2' -> 'SD 2.x', 'w64' -> 'width 64'."""
    if family in FAMILY_TITLES:
        return FAMILY_TITLES[family]
    return f"width {family[1:]}" if family.startswith("w") else family


def meta_string(value: object) -> str:
    """Header metadata is strings only: numbers become their text, dicts and lists become JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True)
    return str(value)


def vectors_sha256(vectors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensor data: for each key in sorted order, the key, its shape, then float32 LE bytes."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(vectors):
        tensor = vectors[key]
        digest.update(f"{key}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.to(torch.float32).contiguous().numpy().astype("<f4").tobytes())
    return digest.hexdigest()


def _checked_tensor(name: str, key: str, tensor: object) -> torch.Tensor:
    """A detached float32 CPU copy of a (n, dim) tensor, or a clear error saying what is wrong with it."""
    import torch

    where = f"embedding '{name}', key '{key}'"
    if not isinstance(tensor, torch.Tensor):
        raise EmbeddingFormatError(f"{where}: expected a tensor, found {type(tensor).__name__}")
    if not (tensor.is_floating_point()):
        raise EmbeddingFormatError(f"{where}: dtype {tensor.dtype} is not a floating-point type")
    if tensor.dim() == 1:
        raise EmbeddingFormatError(f"{where}: a 1-D tensor; use shape (1, {tensor.shape[0]}) for one vector")
    if tensor.dim() != 2:
        raise EmbeddingFormatError(
            f"{where}: shape {tuple(tensor.shape)} is {tensor.dim()}-D; expected (n, dim)"
        )
    n, dim = tensor.shape
    if not (1 <= n <= MAX_VECTORS) or not (1 <= dim <= MAX_WIDTH):
        raise EmbeddingFormatError(
            f"{where}: shape {(n, dim)} is not an embedding (expected 1..{MAX_VECTORS} vectors of width "
            f"1..{MAX_WIDTH})"
        )
    out = tensor.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()  # (n, dim)
    if not torch.isfinite(out).all():
        raise EmbeddingFormatError(f"{where}: contains NaN or infinite values (a diverged training run?)")
    return out


@dataclass(frozen=True, eq=False)
class Embedding:
    """A learned concept: vectors per text encoder that stand in for <name> in a prompt.

    `vectors` maps an encoder key ("emb_params", or "clip_l" + "clip_g" for SDXL) to a float32 CPU tensor of
    shape (n, dim); every key has the same n. The value copies what it is given; callers keep their tensors.
    """

    name: str
    vectors: dict[str, torch.Tensor]
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise EmbeddingFormatError("an embedding needs a non-empty name")
        if not isinstance(self.vectors, dict) or not self.vectors:
            raise EmbeddingFormatError(f"embedding '{self.name}' has no vectors")
        # Encoder order (clip_l before clip_g), whatever order the file stored them in (safetensors sorts).
        given = {str(k): t for k, t in self.vectors.items()}
        order = sorted(given, key=lambda k: (*ENCODER_KEYS, k).index(k))
        vectors = {k: _checked_tensor(self.name, k, given[k]) for k in order}
        counts = {k: t.shape[0] for k, t in vectors.items()}
        if len(set(counts.values())) > 1:
            raise EmbeddingFormatError(
                f"embedding '{self.name}': encoders disagree on the vector count {counts}; every key needs "
                "the same n"
            )
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "meta", {str(k): meta_string(v) for k, v in self.meta.items()})

    # --- properties ---
    @property
    def num_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def widths(self) -> dict[str, int]:
        return {key: tensor.shape[1] for key, tensor in self.vectors.items()}

    @property
    def family(self) -> str:
        return self.meta.get("family") or family_from_widths(self.widths)

    @property
    def sha256(self) -> str:
        return vectors_sha256(self.vectors)

    @property
    def parent(self) -> object:
        """The lineage (decoded `parent` JSON), or None."""
        text = self.meta.get("parent")
        return json.loads(text) if text else None

    # --- new values ---
    def with_name(self, name: str) -> Embedding:
        return Embedding(name, self.vectors, {**self.meta, "name": name})

    def with_meta(self, **kv: object) -> Embedding:
        """A copy with metadata keys set (values become strings; None removes a key)."""
        meta = {k: v for k, v in self.meta.items() if kv.get(k, "") is not None}
        meta.update({k: meta_string(v) for k, v in kv.items() if v is not None})
        return Embedding(self.name, self.vectors, meta)

    def with_vectors(self, vectors: dict[str, torch.Tensor]) -> Embedding:
        """The same embedding (name, metadata) holding other vectors."""
        return Embedding(self.name, vectors, self.meta)

    def norms(self) -> dict[str, list[float]]:
        """The L2 norm of every vector, per encoder key."""
        return {k: [round(float(x), 6) for x in t.norm(dim=1)] for k, t in self.vectors.items()}

    def describe(self) -> str:
        widths = ", ".join(f"{k} {w}" for k, w in self.widths.items())
        return f"{self.name}: {family_title(self.family)}, {self.num_vectors} vector(s), width {widths}"


def is_close(a: Embedding, b: Embedding, tol: float = 0.0) -> bool:
    """True when both have the same keys and shapes and their vectors differ by at most `tol`."""
    if a.widths != b.widths or a.num_vectors != b.num_vectors:
        return False
    return all(float((a.vectors[k] - b.vectors[k]).abs().max()) <= tol for k in a.vectors)
