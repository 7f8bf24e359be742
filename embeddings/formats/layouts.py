"""Recognising an embedding inside a loaded dict (from safetensors, a pickle or a PNG chunk).

Layouts (formats-and-anchors.md):
    A1111         {"string_to_param": {"*": (n, dim)}, "string_to_token", "name", "step", ...}
    kohya/Comfy   {"emb_params": (n, dim)}
    SDXL          {"clip_l": (n, 768), "clip_g": (n, 1280)}
    diffusers     {"<token>": (n, dim) or (dim,)}
"""

from __future__ import annotations

from pathlib import Path

import torch

from embeddings.errors import EmbeddingFormatError
from embeddings.value import ENCODER_KEYS, SINGLE_KEY, Embedding, family_claim_fits

A1111_META = {"step": "a1111.step", "sd_checkpoint": "a1111.sd_checkpoint", "name": "a1111.name"}
A1111_META["sd_checkpoint_name"] = "a1111.sd_checkpoint_name"
A1111_EXTRA_KEY = "tokensmith"  # our metadata inside an A1111 dict (strings only); other readers ignore it
# Metadata a file's reader recomputes, never carried from one file to the next.
OWN_META = ("tokensmith.version", "format", "name", "num_vectors", "sha256", "source_format", "source_file")
# What a TORCHTENSOR leaf that is not a number is, in a message ("it holds a boolean").
JSON_KINDS = {bool: "a boolean", str: "a string", dict: "an object", type(None): "null"}


def layout_of(data: dict) -> str:
    """'a1111' | 'canonical' | 'diffusers', or EmbeddingFormatError describing what was found instead."""
    if "string_to_param" in data:
        return "a1111"
    tensor_keys = [k for k, v in data.items() if isinstance(v, torch.Tensor)]
    if tensor_keys and set(tensor_keys) <= set(ENCODER_KEYS):
        if SINGLE_KEY in tensor_keys and len(tensor_keys) > 1:
            raise EmbeddingFormatError(
                f"keys {', '.join(sorted(tensor_keys))} mix emb_params (one text encoder) with per-encoder "
                "keys (clip_l + clip_g for SDXL): not one embedding; save each layout in its own file"
            )
        return "canonical"
    if len(data) == 1 and tensor_keys:
        return "diffusers"
    if len(tensor_keys) == len(data) and multi_token_order(data):
        return "diffusers"
    shown = ", ".join(sorted(map(str, data))[:8]) + (", ..." if len(data) > 8 else "")
    if len(tensor_keys) == 16:
        hint = "; it looks like an XTI (per-layer) embedding, which is not supported"
    elif len(tensor_keys) > 16:
        hint = "; it looks like a model checkpoint, not an embedding"
    else:
        hint = ""
    raise EmbeddingFormatError(f"not an embedding layout (keys: {shown}){hint}")


def multi_token_order(data: dict) -> list[str] | None:
    """Keys `T`, `T_1`, …, `T_{n-1}` (one vector each, as diffusers names a multi-vector token when it saves
    one key per vector) in vector order, else None."""
    keys = [str(k) for k in data]
    base = min(keys, key=len) if keys else ""
    order = [base] + [f"{base}_{i}" for i in range(1, len(keys))]
    return order if len(keys) > 1 and sorted(order) == sorted(keys) else None


def embedding_from_dict(data: object, *, path: Path, source_format: str) -> Embedding:
    """An Embedding from any known layout; the name is a best guess (stem, token or A1111 `name`)."""
    if not isinstance(data, dict):
        raise EmbeddingFormatError(f"{path}: holds a {type(data).__name__}, not an embedding dict")
    try:
        layout = layout_of(data)
        if layout == "a1111":
            emb = _from_a1111(data, path)
        elif layout == "canonical":
            vectors = {k: _as_2d(v, k) for k, v in data.items() if isinstance(v, torch.Tensor)}
            emb = Embedding(_stem(path), vectors)
            layout = "sdxl" if SINGLE_KEY not in vectors else "kohya"
        else:
            order = multi_token_order(data) or list(data)
            token = str(order[0])
            tensor = torch.cat([_as_2d(data[k], str(k)) for k in order]) if len(order) > 1 else data[token]
            name = token.strip()
            name = name[1:-1] if len(name) > 2 and name.startswith("<") and name.endswith(">") else name
            emb = Embedding(name or _stem(path), {SINGLE_KEY: _as_2d(tensor, token)}, {"token": token})
    except EmbeddingFormatError as exc:
        raise EmbeddingFormatError(f"{path}: {exc}") from None
    return emb.with_meta(source_format=f"{source_format}:{layout}", source_file=path.name)


def _from_a1111(data: dict, path: Path) -> Embedding:
    params = data["string_to_param"]
    params = getattr(params, "_parameters", params)  # a ParameterDict (original TI repo, torch 1.11 A1111)
    if not isinstance(params, dict) or not params:
        raise EmbeddingFormatError("string_to_param is empty or not a dict")
    if len(params) != 1:
        raise EmbeddingFormatError(f"the file has {len(params)} terms; an A1111 embedding has exactly one")
    (tensor,) = params.values()
    vectors = _as_2d(tensor, "string_to_param")
    meta = _carried_meta(data, {SINGLE_KEY: vectors.shape[-1]})  # A1111's own keys below win over ours
    for key, meta_key in A1111_META.items():
        value = data.get(key)
        if value is not None and isinstance(value, str | int | float):
            meta[meta_key] = str(value)
    if "a1111.step" in meta:
        meta["steps"] = meta["a1111.step"]
    if "a1111.sd_checkpoint_name" in meta or "a1111.sd_checkpoint" in meta:
        label = meta.get("a1111.sd_checkpoint_name", "")
        checkpoint_hash = meta.get("a1111.sd_checkpoint")
        meta["base_model"] = f"{label} [{checkpoint_hash}]".strip() if checkpoint_hash else label
    return Embedding(_stem(path), {SINGLE_KEY: vectors}, meta)


def carried_meta(emb: Embedding) -> dict[str, str]:
    """The metadata an exported A1111 dict carries under A1111_EXTRA_KEY: all but what a reader recomputes,
    with the family (width 64 alone cannot say 'demo')."""
    return {"family": emb.family, **{k: v for k, v in emb.meta.items() if k not in (*OWN_META, "family")}}


def _carried_meta(data: dict, widths: dict[str, int]) -> dict[str, str]:
    """The metadata under A1111_EXTRA_KEY of a dict we exported; string pairs only (the file is untrusted),
    and a `family` only where the widths allow it."""
    extra = data.get(A1111_EXTRA_KEY)
    if not isinstance(extra, dict):
        return {}
    meta = {k: v for k, v in extra.items() if type(k) is str and type(v) is str and k not in OWN_META}
    if "family" in meta and not family_claim_fits(meta["family"], widths):
        del meta["family"]
    return meta


def _as_2d(tensor: object, key: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise EmbeddingFormatError(f"'{key}' is a {type(tensor).__name__}, not a tensor")
    return tensor.unsqueeze(0) if tensor.dim() == 1 else tensor  # diffusers' old 1-D single vectors


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".safetensors", ".pt", ".bin", ".png", ".webp"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return path.stem or name


# --- A1111's JSON-with-tensors encoding (PNG chunks and side panels) ---
def tensors_to_json(data: object) -> object:
    """Tensors become {"TORCHTENSOR": nested lists}, as A1111's EmbeddingEncoder writes them."""
    if isinstance(data, torch.Tensor):
        return {"TORCHTENSOR": data.detach().cpu().tolist()}
    if isinstance(data, dict):
        return {k: tensors_to_json(v) for k, v in data.items()}
    return data


def tensors_from_json(data: object, *, source: str) -> object:
    """Inverse of `tensors_to_json`: every {"TORCHTENSOR": nested lists} becomes a float64 tensor. `source`
    names where the JSON came from in errors ("the sd-ti-embedding chunk").

    A TORCHTENSOR of anything but numbers (booleans and strings too, which torch would turn into 1.0 and
    0.0, or integers too large for a float) is an EmbeddingFormatError, as is JSON nested past Python's
    recursion limit.
    """
    try:
        return _tensors_from_json(data, source)
    except RecursionError:
        raise EmbeddingFormatError(f"{source} is nested too deeply to be an embedding") from None


def _tensors_from_json(data: object, source: str) -> object:
    if isinstance(data, dict):
        if "TORCHTENSOR" in data:
            return _tensor_from_json(data["TORCHTENSOR"], source)
        return {k: _tensors_from_json(v, source) for k, v in data.items()}
    return data


def _tensor_from_json(values: object, source: str) -> torch.Tensor:
    odd = _non_number(values)
    why = f"it holds {odd}" if odd else ""
    if not why:
        try:
            return torch.tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:  # ragged, too deep, too large
            why = str(exc)
    raise EmbeddingFormatError(f"{source} holds a TORCHTENSOR that is not a numeric array ({why})")


def _non_number(values: object) -> str | None:
    """What the first leaf of nested JSON lists is when it is not a number ('a boolean'), else None.
    A loop, not recursion: the lists may be nested deeper than Python's stack."""
    stack = [values]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        elif type(value) not in (int, float):  # bool is an int subclass: `type`, not isinstance
            return JSON_KINDS.get(type(value), type(value).__name__)
    return None
