"""diffusers' textual-inversion files: `{"<token>": (n, dim)}`; its SDXL script writes a pair of them,
`learned_embeds.safetensors` (text_encoder, 768) + `learned_embeds_2.safetensors` (text_encoder_2, 1280).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from embeddings.errors import EmbeddingFormatError
from embeddings.files import fsync_dir, safetensors_bytes, temp_path_for, write_temp
from embeddings.value import SDXL_KEYS, SINGLE_KEY, Embedding

PAIR_NAMES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")
PAIR_NAMES_BIN = ("learned_embeds.bin", "learned_embeds_2.bin")
PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt")  # an --out with these gets a torch pickle, else safetensors


def pair_of(path: Path) -> tuple[Path, Path] | None:
    """The SDXL pair (first, second) that `path` (either file, or their folder) belongs to, if both exist."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.is_dir() and path.name not in PAIR_NAMES + PAIR_NAMES_BIN:
        return None
    for names in (PAIR_NAMES, PAIR_NAMES_BIN):
        first, second = folder / names[0], folder / names[1]
        if first.is_file() and second.is_file() and (path.is_dir() or path.name in names):
            return first, second
    return None


def same_token(first: Embedding, second: Embedding) -> bool:
    """Whether the two files of a pair hold the same token (one SDXL embedding), not two unrelated ones."""
    return first.meta.get("token") == second.meta.get("token")


def combine_pair(first: Embedding, second: Embedding, folder: Path) -> Embedding:
    """The SDXL embedding of a diffusers pair: first file clip_l, second clip_g; tokens must agree."""
    if not same_token(first, second):
        raise EmbeddingFormatError(
            f"{folder}: the SDXL pair holds different tokens ({first.meta.get('token')} vs "
            f"{second.meta.get('token')}); import the files one by one"
        )
    vectors = {"clip_l": first.vectors[SINGLE_KEY], "clip_g": second.vectors[SINGLE_KEY]}
    counts = [tensor.shape[0] for tensor in vectors.values()]
    if counts[0] != counts[1]:
        raise EmbeddingFormatError(
            f"{folder}: the SDXL pair's files disagree: learned_embeds holds {counts[0]} vector(s) of "
            f"{first.meta.get('token')} but learned_embeds_2 holds {counts[1]}; both encoders need the same "
            "count (re-export the pair)"
        )
    meta = {**first.meta, "source_format": "diffusers:sdxl-pair", "source_file": folder.name}
    return Embedding(first.name, vectors, meta)


def diffusers_meta(emb: Embedding) -> dict[str, str]:
    """The header of a diffusers `.safetensors`: the embedding's provenance (base model, steps, init, trainer,
    lineage, A1111's keys, ...) and its family, so importing the file again loses none of it."""
    own = ("tokensmith.version", "num_vectors", "format", "name", "sha256", "family")
    return {
        "format": "pt",
        "name": emb.name,
        "sha256": emb.sha256,
        "family": emb.family,
        **{k: v for k, v in emb.meta.items() if k not in own},
    }


def _file_bytes(token: str, tensor: torch.Tensor, meta: dict[str, str], *, pickled: bool) -> bytes:
    if pickled:
        buffer = io.BytesIO()
        torch.save({token: tensor.clone()}, buffer)
        return buffer.getvalue()
    return safetensors_bytes({token: tensor.contiguous()}, meta)


def write_diffusers(emb: Embedding, out: Path) -> list[Path]:
    """`{"<name>": (n, dim)}` at `out` (`.bin`/`.pt`/`.ckpt`: pickle, else safetensors); SDXL: a folder.

    Every file is written to a temp file first and renamed only when all are complete.
    """
    out = Path(out)
    token = f"<{emb.name}>"
    meta = diffusers_meta(emb)
    if set(emb.vectors) == {SINGLE_KEY}:
        plan = [(out, emb.vectors[SINGLE_KEY])]
        pickled = out.suffix.lower() in PICKLE_SUFFIXES
    elif set(emb.vectors) == set(SDXL_KEYS):
        # any suffix (file.txt too) reads as a file name; an existing folder with a dot in its name is fine
        looks_like_a_file = bool(out.suffix) and not out.is_dir()
        if (out.exists() and not out.is_dir()) or looks_like_a_file:
            raise EmbeddingFormatError(
                f"{out}: an SDXL export to diffusers is two files (learned_embeds.safetensors + "
                f"learned_embeds_2.safetensors); give a folder for them, e.g. --out {out.with_suffix('')}/"
            )
        pickled = False
        plan = [(out / PAIR_NAMES[0], emb.vectors["clip_l"]), (out / PAIR_NAMES[1], emb.vectors["clip_g"])]
    else:
        raise EmbeddingFormatError(
            f"embedding '{emb.name}' has keys {sorted(emb.vectors)}; diffusers has no layout"
        )
    temps = []
    try:
        for target, tensor in plan:
            data = _file_bytes(token, tensor, meta, pickled=pickled)
            temps.append((write_temp(target, lambda tmp, d=data: tmp.write_bytes(d)), target))
        _replace_all(temps)
    finally:
        for tmp, _target in temps:
            tmp.unlink(missing_ok=True)
    fsync_dir(plan[0][0].parent)
    return [target for target, _ in plan]


def _replace_all(moves: list[tuple[Path, Path]]) -> None:
    """Rename each (temp, target); if one rename fails, put back the targets already replaced, so an SDXL
    pair is never left half new and half old."""
    done: list[tuple[Path, Path | None]] = []  # (target, the old file's backup or None)
    backups: list[Path] = []
    try:
        for tmp, target in moves:
            backup = None
            if len(moves) > 1 and target.is_file():
                backup = temp_path_for(target)
                os.link(target, backup)
                backups.append(backup)
            os.replace(tmp, target)
            done.append((target, backup))
    except BaseException:
        for target, backup in reversed(done):
            if backup is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(backup, target)
        raise
    finally:
        for backup in backups:
            backup.unlink(missing_ok=True)
