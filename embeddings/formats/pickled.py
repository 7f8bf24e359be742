"""Pickled files (`.pt`, `.bin`): A1111 embeddings, diffusers `learned_embeds.bin`, kohya `.pt`.

Loaded only with `torch.load(..., weights_only=True)`: tensors, dicts, lists, strings and numbers, nothing
that runs code. A pickle that asks for anything else is refused with a clear error; none of it is executed.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from embeddings.errors import EmbeddingFormatError
from embeddings.files import atomic_write
from embeddings.formats.layouts import embedding_from_dict
from embeddings.value import SINGLE_KEY, Embedding

A1111_PLACEHOLDER_ID = 265  # the id A1111 records for its "*" placeholder (string_to_token); informative only


class UnsafePickleError(EmbeddingFormatError):
    """A pickle asked to import code or build objects beyond plain data: refused, never executed."""


def _allow_parameter_dicts() -> contextlib.AbstractContextManager:
    """Also accept torch.nn.ParameterDict: the original textual-inversion code (and A1111 files saved by torch
    1.11) pickle `string_to_param` as one. Restoring it only fills attributes; no code from the file runs.
    """
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals([torch.nn.ParameterDict]) if safe_globals else contextlib.nullcontext()


def _unpickler_reason(exc: Exception) -> str:
    """The line of torch's weights-only refusal that says what it met: 'Unsupported global: GLOBAL os.system',
    'Trying to load unsupported GLOBAL posix.system whose module posix is blocked', 'Unsupported operand 149'.

    Never torch's advice around it, which suggests re-running with weights_only=False: for an untrusted file
    that is the one thing not to do.
    """
    lines = [line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(exc).splitlines()]
    detail = [line for line in lines if "unsupported" in line.lower() and "weights_only" not in line]
    if not detail:
        return "torch's weights-only loader refused it"
    return detail[0].split(". Please")[0]  # not its advice to allow-list what it refused


def load_pickle(path: Path, *, mmap: bool = False) -> object:
    """The plain data inside a torch pickle, refusing anything else (weights_only=True). `mmap` maps the
    tensors of a zip-format file instead of reading them (for multi-GB checkpoints); legacy files are read."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads fine; we report errors
            warnings.simplefilter("ignore", UserWarning)
            with _allow_parameter_dicts():
                if mmap and zipfile.is_zipfile(path):
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                # An open file, not the path: torch picks its safetensors reader for a path that ends in
                # .safetensors, and A1111 pickles get renamed so.
                with open(path, "rb") as file:
                    return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "global" in reason.lower():  # it names a function or class to import: what an attack needs
            raise UnsafePickleError(
                f"{path}: refused: this pickle wants to run code or build objects that are not plain tensors "
                f"and dicts, so it may be malicious; nothing was executed ({reason[:160]})"
            ) from None
        raise EmbeddingFormatError(
            f"{path}: not a readable torch file: corrupt, not a pickle, or pickled in a way torch's safe "
            f"loader does not read; nothing was executed ({reason[:160]})"
        ) from None
    except FileNotFoundError:
        raise
    except Exception as exc:  # the untrusted-file boundary: torch raises many types here
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EmbeddingFormatError(
            f"{path}: not a readable torch file: truncated, or not written by torch.save "
            f"({type(exc).__name__}{': ' + text[:160] if text else ''})"
        ) from None


def read_pickled(path: Path) -> Embedding:
    """An Embedding from an A1111 `.pt`, a diffusers `.bin` or a kohya `.pt`."""
    return embedding_from_dict(load_pickle(path), path=path, source_format="pickle")


def a1111_dict(emb: Embedding) -> dict:
    """The dict A1111 saves: `string_to_param` plus `name`/`step`/checkpoint for one encoder; for SDXL only
    `clip_l`/`clip_g` tensors, because A1111's SDXL branch calls `.detach()` on every value of the dict (the
    name then comes from the file stem, as A1111 does for every .pt).
    """
    if set(emb.vectors) != {SINGLE_KEY}:
        return {k: v.clone() for k, v in emb.vectors.items()}
    steps = emb.meta.get("steps", "")
    return {
        "string_to_token": {"*": A1111_PLACEHOLDER_ID},
        "string_to_param": {"*": emb.vectors[SINGLE_KEY].clone()},
        "name": emb.name,
        "step": int(steps) if steps.isdigit() else None,
        "sd_checkpoint": emb.meta.get("a1111.sd_checkpoint"),
        "sd_checkpoint_name": emb.meta.get("a1111.sd_checkpoint_name") or emb.meta.get("base_model"),
    }


def write_a1111_pt(emb: Embedding, path: Path) -> Path:
    """Write the A1111 `.pt` dict (loadable with weights_only=True), atomically."""
    buffer = io.BytesIO()
    torch.save(a1111_dict(emb), buffer)
    return atomic_write(Path(path), lambda tmp: tmp.write_bytes(buffer.getvalue()))
