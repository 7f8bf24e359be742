"""Prompt injection: add `<name>`, `<name>_1`, … to tokenizers and write the vectors into input embeddings.

`encoders` is a list of `(key, tokenizer, text_encoder)` triples: `[("emb_params", tok, te)]` for SD 1.x/2.x,
`[("clip_l", tok, te), ("clip_g", tok2, te2)]` for SDXL. Tokenizers and text encoders are duck-typed (the
transformers CLIP classes): `add_tokens`, `get_vocab`, `get_added_vocab`, `convert_tokens_to_ids`,
`get_input_embeddings`, `resize_token_embeddings`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from embeddings.errors import TokensmithError
from embeddings.value import (
    FAMILY_TITLES,
    SDXL_KEYS,
    SINGLE_KEY,
    Embedding,
    family_from_widths,
    family_title,
)

Encoders = Sequence[tuple[str, Any, Any]]
SD_FAMILIES = ("sd1", "sd2", "sdxl")  # the families a user's own model (not the demo world) can be of


class InstallError(TokensmithError, ValueError):
    """An embedding does not fit a model (widths, encoders) or its token clashes with the vocabulary."""


# --- token names and prompts (strings only) ---
def token_names(emb: Embedding | str, num_vectors: int | None = None) -> list[str]:
    """Diffusers' multi-vector naming: a 3-vector 'cat' -> ['<cat>', '<cat>_1', '<cat>_2']."""
    name, n = (emb, num_vectors or 1) if isinstance(emb, str) else (emb.name, emb.num_vectors)
    trigger = f"<{name}>"
    return [trigger] + [f"{trigger}_{i}" for i in range(1, n)]


def expand_prompt(prompt: str, embeddings: Iterable[Embedding]) -> str:
    """'a <cat> on a mat' -> 'a <cat> <cat>_1 on a mat' for a 2-vector cat; expanded prompts stay as is."""
    for emb in embeddings:
        trigger = re.escape(f"<{emb.name}>")
        pattern = re.compile(rf"{trigger}(?:_\d+)?(?:\s+{trigger}_\d+)*")
        prompt = pattern.sub(lambda _m, e=emb: " ".join(token_names(e)), prompt)
    return prompt


# --- vectors per encoder ---
def encoder_width(text_encoder: Any) -> int:
    return int(text_encoder.get_input_embeddings().weight.shape[1])


def _model_family(encoders: Encoders) -> str:
    return family_from_widths({key: encoder_width(te) for key, _tok, te in encoders})


def vectors_for_encoders(
    emb: Embedding, encoders: Encoders, *, partial: bool = False, model_family: str | None = None
) -> list[torch.Tensor]:
    """The (n, width) vectors to write into each encoder, or InstallError saying in words why they do not fit.

    A single-encoder embedding fits a single-encoder model of the same width. With `partial=True` an
    `emb_params` embedding of width 768 goes into SDXL's `clip_l` and `clip_g` gets zero vectors (the
    SD 1.x -> SDXL option: only half of the text conditioning carries the concept); the other way, an SDXL
    embedding's `clip_l` half goes into an SD 1.x model.
    """
    keys = [key for key, _tok, _te in encoders]
    widths = {key: encoder_width(te) for key, _tok, te in encoders}
    family = model_family or _model_family(encoders)  # LoadedModel.family names it best
    model = family_title(family)
    out = []
    for key, _tok, _te in encoders:
        if key in emb.vectors:
            vectors = emb.vectors[key]
        elif len(emb.vectors) == 1 and len(encoders) == 1:
            vectors = next(iter(emb.vectors.values()))
        elif (
            partial and key == SINGLE_KEY and "clip_l" in emb.vectors and emb.widths["clip_l"] == widths[key]
        ):
            vectors = emb.vectors["clip_l"]  # SDXL -> SD 1.x: the clip_l half alone
        elif partial and key == "clip_l" and _fits_clip_l(emb, widths):
            vectors = emb.vectors[SINGLE_KEY]  # SD 1.x -> SDXL: the concept goes into clip_l
        elif partial and _fits_clip_l(emb, widths):
            vectors = torch.zeros(emb.num_vectors, widths[key])  # (n, width): this encoder gets no concept
        else:
            advice = partial_advice(emb) if _partial_possible(emb, widths) else model_advice(emb, family)
            raise InstallError(
                f"embedding '{emb.name}' ({family_title(emb.family)} keys {sorted(emb.vectors)}) doesn't fit "
                f"this model ({model}, encoders {keys})" + (f": {advice}" if advice else "")
            )
        if vectors.shape[1] != widths[key]:
            # 'emb_params' is the file's key, not an encoder: a one-encoder model has just "its text encoder"
            encoder = "text encoder" if key == SINGLE_KEY else f"{key} text encoder"
            swapped = swapped_hint(emb.widths, widths)
            if swapped:  # "trained for SDXL; this model is SDXL" would explain nothing
                why = swapped
            elif emb.family == family and family in SD_FAMILIES:  # a small SDXL-layout model, say
                why = f"it was trained for another {model} model than this one (its widths differ)"
            else:
                hint = model_advice(emb, family)
                why = f"it was trained for {family_title(emb.family)}; this model is {model}" + (
                    f"; {hint}" if hint else ""
                )
            raise InstallError(
                f"embedding '{emb.name}' has width {vectors.shape[1]} but this model's {encoder} has width "
                f"{widths[key]}: {why}"
            )
        out.append(vectors)
    return out


def model_advice(emb: Embedding, model_family: str) -> str:
    """Which --model to pass instead, for an embedding made for another family than the model's: '' when
    that family is unknown (a width alone names no model to get) or the same.

    'pass --model with an SD 1.x model (a diffusers folder, a hub id or a .safetensors checkpoint)'
    """
    if emb.family == model_family:
        return ""
    if emb.family == "demo":
        return "use --model demo"
    if emb.family in SD_FAMILIES and model_family in FAMILY_TITLES:
        return (
            f"pass --model with an {family_title(emb.family)} model (a diffusers folder, a hub id or a "
            ".safetensors checkpoint)"
        )
    return ""


def swapped_hint(widths: dict[str, int], model_widths: dict[str, int], *, model: str = "this model's") -> str:
    """A sentence when a file's clip_l and clip_g widths are `model`'s the other way round (a converter that
    wrote the keys swapped), else ''."""
    if set(widths) != set(SDXL_KEYS) or set(model_widths) != set(SDXL_KEYS):
        return ""
    if widths["clip_l"] == widths["clip_g"]:
        return ""
    if (widths["clip_l"], widths["clip_g"]) != (model_widths["clip_g"], model_widths["clip_l"]):
        return ""
    return (
        f"its clip_l and clip_g look swapped: its clip_l ({widths['clip_l']}) has the width of {model} "
        "clip_g and the other way round; the tool that wrote it mixed up the keys: get a correct copy, or "
        "save its clip_l tensor as clip_g and its clip_g tensor as clip_l (safetensors in Python) and "
        "import that file"
    )


def fitting_halves(
    emb: Embedding, encoders: Encoders, *, model_family: str | None = None
) -> tuple[list[tuple[tuple[str, Any, Any], torch.Tensor]], str | None]:
    """Each encoder worth inspecting `emb` in, with its (n, width) vectors, and a note when `emb` fits these
    encoders only partly (None when it fits): an SD 1.x embedding on SDXL shows its clip_l half (clip_g would
    get zero vectors, which have no neighbours), an SDXL one on SD 1.x its clip_l half. InstallError when no
    part of it fits. What `tokensmith nearest` and the studio's Inspect page show."""
    try:
        per_encoder = vectors_for_encoders(emb, encoders, model_family=model_family)
        return list(zip(encoders, per_encoder, strict=True)), None
    except InstallError:  # an SD 1.x embedding on SDXL (or the reverse): look at the half that fits
        per_encoder = vectors_for_encoders(emb, encoders, partial=True, model_family=model_family)
    pairs = list(zip(encoders, per_encoder, strict=True))
    left_out = [encoder[0] for encoder, vectors in pairs if not vectors.any()]
    shown = [(encoder, vectors) for encoder, vectors in pairs if vectors.any()]
    partly, how = f"<{emb.name}> fits this model only partly", "(that is how --partial installs it)"
    if left_out:
        return shown, f"{partly}: {', '.join(left_out)} would get zero vectors, so it is not shown {how}"
    keys = [key for key, _tok, _te in encoders]
    unused = [key for key in emb.vectors if key not in keys and key != "clip_l"]
    return shown, (
        f"{partly}: only its clip_l half is used and shown {how}; this model has no encoder for "
        f"{', '.join(unused) or 'the rest'}"
    )


# --- install / uninstall ---
def install(
    emb: Embedding,
    encoders: Encoders,
    *,
    partial: bool = False,
    model_family: str | None = None,
    token_name: str | None = None,
) -> list[str]:
    """Add `emb`'s tokens to every tokenizer and write its vectors into the text encoders; returns the tokens.

    Re-installing a name replaces its vectors (that is how a swap works); a changed vector count adds or
    removes `<name>_k` tokens so that the tokenizer holds exactly the current ones. `partial` and
    `model_family` are vectors_for_encoders' (the clip_l-only install; the model's name in errors).
    `token_name` spells the tokens (`<token_name>`, `<token_name>_1`, ...) instead of the embedding's name,
    which errors still use: the generation path installs under aliases no prompt syntax can misread.
    """
    # checks everything before any change
    per_encoder = vectors_for_encoders(emb, encoders, partial=partial, model_family=model_family)
    name = token_name or emb.name
    tokens = token_names(name, emb.num_vectors)
    for (_key, tokenizer, text_encoder), vectors in zip(encoders, per_encoder, strict=True):
        _check_no_vocab_clash(tokens, tokenizer)
        stale = [t for t in installed_tokens(name, tokenizer) if t not in tokens]
        if stale:
            _remove_tokens(stale, tokenizer, text_encoder)
        tokenizer.add_tokens([t for t in tokens if t not in tokenizer.get_added_vocab()])
        ids = tokenizer.convert_tokens_to_ids(tokens)
        weight = text_encoder.get_input_embeddings().weight  # (vocab, width)
        if max(ids) >= weight.shape[0]:
            _grow(text_encoder, len(tokenizer))
            weight = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[ids] = vectors.to(device=weight.device, dtype=weight.dtype)  # (n, width)
    return tokens


def uninstall(name: str, encoders: Encoders) -> list[str]:
    """Remove `<name>` and its `<name>_k` tokens from every tokenizer and their rows from the encoders."""
    removed: list[str] = []
    for _key, tokenizer, text_encoder in encoders:
        tokens = installed_tokens(name, tokenizer)
        if tokens:
            _remove_tokens(tokens, tokenizer, text_encoder)
            removed = tokens
    if not removed:
        raise InstallError(f"'<{name}>' is not installed in this model; nothing to uninstall")
    return removed


def installed_tokens(name: str, tokenizer: Any) -> list[str]:
    """The tokens of `name` present in a tokenizer's added vocabulary, in id order."""
    pattern = re.compile(rf"{re.escape(f'<{name}>')}(?:_\d+)?")
    added = tokenizer.get_added_vocab()
    return sorted((t for t in added if pattern.fullmatch(t)), key=added.get)


def _fits_clip_l(emb: Embedding, widths: dict[str, int]) -> bool:
    """A single-encoder embedding whose width is that of this (SDXL-style) model's clip_l encoder."""
    return SINGLE_KEY in emb.vectors and "clip_l" in widths and emb.widths[SINGLE_KEY] == widths["clip_l"]


def needs_partial(emb: Embedding, encoders: Encoders) -> bool:
    """Whether `emb` fits these encoders only with `partial=True` (an SD 1.x embedding on SDXL, whose
    clip_g then gets zero vectors; an SDXL embedding on SD 1.x, of which only the clip_l half is used)."""
    return _partial_possible(emb, {key: encoder_width(te) for key, _tok, te in encoders})


def partial_advice(emb: Embedding) -> str:
    """How to ask for the clip_l-only install, in the words of the generate/grid/variations flag."""
    if SINGLE_KEY in emb.vectors:
        return "use --partial to put it in clip_l only (clip_g gets zero vectors; expect a weaker effect)"
    return "use --partial to use its clip_l half only (expect a weaker effect)"


def _partial_possible(emb: Embedding, widths: dict[str, int]) -> bool:
    """Whether the clip_l-only install (SD 1.x -> SDXL, or an SDXL file's clip_l half -> SD 1.x) would fit."""
    sdxl_half = "clip_l" in emb.vectors and list(widths) == [SINGLE_KEY]
    return _fits_clip_l(emb, widths) or (sdxl_half and emb.widths["clip_l"] == widths[SINGLE_KEY])


def _grow(text_encoder: Any, size: int) -> None:
    # mean_resizing fits a covariance over the whole vocabulary (slow); the new rows get overwritten anyway
    try:
        text_encoder.resize_token_embeddings(size, mean_resizing=False)
    except TypeError:  # transformers before 4.46
        text_encoder.resize_token_embeddings(size)


def _check_no_vocab_clash(tokens: list[str], tokenizer: Any) -> None:
    added = tokenizer.get_added_vocab()
    vocab = tokenizer.get_vocab()
    clash = [t for t in tokens if t in vocab and t not in added]
    if clash:
        raise InstallError(f"token {clash[0]!r} is an ordinary word of this tokenizer; rename the embedding")


def _remove_tokens(tokens: list[str], tokenizer: Any, text_encoder: Any) -> None:
    """Drop added tokens from a (fast) tokenizer and their rows from the input embeddings; later ids shift.

    transformers has no public way to remove an added token, so this rebuilds the `tokenizers` backend from
    its JSON and resets the wrapper's added-token tables (`_tokenizer`, `_added_tokens_*`): private names
    that tests/test_embeddings_inject.py checks against the installed transformers."""
    added = tokenizer.get_added_vocab()
    drop_ids = sorted(added[t] for t in tokens)
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise InstallError("uninstall needs a fast (tokenizers-backed) tokenizer")
    from tokenizers import Tokenizer

    state = json.loads(backend.to_str())
    kept = []
    for entry in sorted(state.get("added_tokens", []), key=lambda e: e["id"]):
        if entry["content"] in tokens:
            continue
        entry["id"] -= sum(1 for d in drop_ids if d < entry["id"])
        kept.append(entry)
    state["added_tokens"] = kept
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))
    # CLIPTokenizer wraps its backend's decode at __init__ to strip '</w>'; the new backend needs it again
    rewrap = getattr(tokenizer, "_wrap_decode_method_backend_tokenizer", None)
    if rewrap is not None:
        rewrap()
    for attr in ("_added_tokens_decoder", "_added_tokens_encoder"):
        table = getattr(tokenizer, attr, None)
        if isinstance(table, dict):
            table.clear()
            if attr == "_added_tokens_decoder":
                table.update({e["id"]: _added_token(e) for e in kept})
            else:
                table.update({e["content"]: e["id"] for e in kept})
    layer = text_encoder.get_input_embeddings()
    keep = torch.ones(layer.weight.shape[0], dtype=torch.bool)
    keep[drop_ids] = False
    with torch.no_grad():
        rows = layer.weight[keep.to(layer.weight.device)].clone()  # (vocab - removed, width)
    new_layer = torch.nn.Embedding(rows.shape[0], rows.shape[1], _weight=rows)  # no random init to discard
    new_layer.weight.requires_grad_(layer.weight.requires_grad)
    text_encoder.set_input_embeddings(new_layer)
    if hasattr(text_encoder, "config") and hasattr(text_encoder.config, "vocab_size"):
        text_encoder.config.vocab_size = rows.shape[0]


def _added_token(entry: dict) -> Any:
    from tokenizers import AddedToken

    return AddedToken(
        entry["content"],
        single_word=entry.get("single_word", False),
        lstrip=entry.get("lstrip", False),
        rstrip=entry.get("rstrip", False),
        normalized=entry.get("normalized", True),
        special=entry.get("special", False),
    )


# --- words of the vocabulary ---
def word_vectors(text: str, tokenizer: Any, text_encoder: Any) -> torch.Tensor:
    """Input token embeddings of a word or phrase: 'keyboard' -> (1, width); 2-token phrase -> (2, width)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise InstallError(f"{text!r} has no tokens in this tokenizer")
    weight = text_encoder.get_input_embeddings().weight  # (vocab, width)
    return weight[ids].detach().to(device="cpu", dtype=torch.float32).clone()  # (len(ids), width)
