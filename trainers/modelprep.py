"""Putting a loaded model into training shape and back: frozen weights on the Accelerator's device, the new
token rows attached (initialised from a word, a phrase or a stored embedding), and the model restored as
found when the run ends."""

from __future__ import annotations

import re

import torch

from embeddings.errors import TokensmithError
from trainers.families import Conditioner, FamilySpec, phrase_vectors, spread
from trainers.rows import attach


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The frozen weights' dtype under `--mixed-precision` (no, fp16, bf16)."""
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def cast_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast a frozen module to `dtype` in place, leaving float32 the submodules its class asks to keep so.

    diffusers' `ModelMixin.to` warns on every dtype cast that modules "should be kept in float32", even when
    its list of them is empty (as it is for SD's UNets and VAEs); the cast itself is torch's. So cast with
    torch's `Module.to` and honour the list here, without the warning a user cannot act on.
    """
    torch.nn.Module.to(module, dtype=dtype)
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    if not keep:
        return
    for name, child in module.named_modules():
        if keep.intersection(name.split(".")):
            torch.nn.Module.to(child, dtype=torch.float32)


def prepare_model(model, accelerator, cfg) -> dict:
    """Freeze everything, move to the Accelerator's device, cast frozen weights for mixed precision.

    Under fp16/bf16 the frozen weights are cast in place to save memory (as diffusers' scripts do) and cast
    back by `restore_model`, so a caller's model comes back in its own dtype but rounded to half precision.
    """
    pipe = model.pipe
    dtype = weight_dtype(cfg.mixed_precision)
    originals = {
        "tokenizers": {k: getattr(pipe, k) for k in ("tokenizer", "tokenizer_2") if hasattr(pipe, k)}
    }
    modules = (pipe.unet, pipe.vae, *[te for _, _, te in model.encoders])
    for module in modules:
        module.requires_grad_(False).eval()
    originals["dtypes"] = [(module, module.dtype) for module in modules]
    if dtype != torch.float32:  # frozen weights in half precision; the new rows stay float32
        for module in modules:  # cast before the move: the device never holds a float32 copy (SDXL: 14 GB)
            cast_weights(module, dtype)
    pipe.to(accelerator.device)
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    originals["gradient_checkpointing"] = cfg.gradient_checkpointing
    originals["attention"] = [(te, te.config._attn_implementation) for _, _, te in model.encoders]
    return originals


def restore_model(model, originals: dict) -> None:
    """Put back the tokenizers, gradient checkpointing, dtypes and attention that `prepare_model` changed."""
    for attr, tokenizer in originals["tokenizers"].items():
        setattr(model.pipe, attr, tokenizer)
    if originals["gradient_checkpointing"]:
        model.pipe.unet.disable_gradient_checkpointing()
    for module, dtype in originals["dtypes"]:  # a bf16/fp16 run leaves the caller's model in its own dtype
        if module.dtype != dtype:
            cast_weights(module, dtype)
    for text_encoder, attention in originals["attention"]:
        if text_encoder.config._attn_implementation != attention:
            text_encoder.set_attn_implementation(attention)


def init_embedding_name(init: str) -> str | None:
    """The stored embedding an init text names, written `<name>` (spaces around it aside), else None (a word
    or phrase): ' <cat> ' -> 'cat', 'cat' -> None. Its form is checked with the config."""
    init = init.strip()
    return init[1:-1] if init.startswith("<") and init.endswith(">") else None


def stored_init(cfg, spec: FamilySpec, store):
    """The stored embedding the run starts from when the init is written `<name>`, else None."""
    name = init_embedding_name(cfg.init or spec.default_init)
    return None if name is None else store.get(name)


def init_vectors(cfg, spec: FamilySpec, key: str, tokenizer, text_encoder, stored) -> torch.Tensor:
    """(n, D) init rows: the `stored` embedding's vectors, else the init word or phrase, spread over n."""
    if stored is None:
        return spread(phrase_vectors(cfg.init or spec.default_init, tokenizer, text_encoder), cfg.vectors)
    if key not in stored.vectors:
        raise TokensmithError(init_misfit(stored, key))
    return spread(stored.vectors[key].float(), cfg.vectors)


def init_misfit(stored, key: str) -> str:
    """Why a stored init embedding cannot start a token on a model whose encoder `key` it lacks."""
    kinds = {"emb_params": "an SD 1.x/2.x-style embedding", "clip_l": "an SDXL embedding"}
    kind = kinds.get(next(iter(stored.vectors)), "this embedding")
    needs = "SDXL's clip_l + clip_g" if key in ("clip_l", "clip_g") else "one text encoder (emb_params)"
    return (
        f"init embedding <{stored.name}> has keys {sorted(stored.vectors)} but this model needs {needs}: "
        f"{kind} cannot start its token; use a word (--init cat) or an embedding made for this model"
    )


def check_init_fits(cfg, store) -> None:
    """Refuse an init embedding `<name>` that the model's encoders cannot take, before the model loads: its
    keys, and for a diffusers folder (the demo world's too) its widths, read from the model's files (a hub id
    is checked once it has loaded)."""
    from trainers.models import planned_encoder_keys, planned_encoder_widths

    name = init_embedding_name(cfg.init or "")
    if name is None:
        return
    keys = planned_encoder_keys(cfg.model, cfg.model_config or None)
    stored = store.get(name)
    missing = [key for key in keys or () if key not in stored.vectors]
    if missing:
        raise TokensmithError(init_misfit(stored, missing[0]))
    for key, width in (planned_encoder_widths(cfg.model) or {}).items():
        if stored.widths[key] != width:
            raise TokensmithError(
                f"init embedding <{stored.name}> has width {stored.widths[key]} ({key}) but this model's "
                f"text encoder has {width}: it was made for another model; use a word (--init cat) or an "
                "embedding made for this model"
            )


def resolve_vectors(cfg, spec: FamilySpec, stored) -> int:
    """cfg.vectors, or when 0: the `stored` init embedding's own vector count, else the family's default."""
    if cfg.vectors:
        return cfg.vectors
    return int(next(iter(stored.vectors.values())).shape[0]) if stored else spec.default_vectors


def init_note(cfg, spec: FamilySpec, model, stored, *, resumed_from: int | None = None) -> str | None:
    """What the new rows start from, for the run's log, e.g. "init: 'cat' -> c, at (2 tokens, one per
    vector); 'cat' is split into pieces by this model's vocabulary". `stored`: the init embedding (or None).
    None for an init with no tokens (its error follows)."""
    n = cfg.vectors
    text = cfg.init or spec.default_init
    if resumed_from is not None:
        return f"init: the checkpoint's rows at step {resumed_from} (the run began from {text!r})"
    if stored is not None:
        k = int(next(iter(stored.vectors.values())).shape[0])
        return f"init: <{stored.name}> ({k} vector{'s' * (k != 1)}{_spread_how(k, n)})"
    _, tokenizer, _ = model.encoders[0]

    def ids_of(words: str) -> list[int]:
        return tokenizer(words, add_special_tokens=False).input_ids

    ids = ids_of(text)
    if not ids:
        return None
    shown = [piece.replace("</w>", "") for piece in tokenizer.convert_ids_to_tokens(ids)]
    note = f"init: {text!r} -> {', '.join(shown)} ({len(ids)} token{'s' * (len(ids) != 1)}"
    note += f"{_spread_how(len(ids), n)})"
    word_ids = {word: ids_of(word) for word in re.findall(r"\w+", text)}
    unknown = [word for word, found in word_ids.items() if tokenizer.unk_token_id in found]
    split = [word for word, found in word_ids.items() if word not in unknown and len(found) > 1]
    for found, what in ((unknown, "unknown to"), (split, "split into pieces by")):
        if found:
            note += f"; {', '.join(repr(word) for word in found)} {'is' if len(found) == 1 else 'are'} "
            note += f"{what} this model's vocabulary"
    return note


def _spread_how(k: int, n: int) -> str:
    if k == n:
        return ", one per vector"
    if k < n:
        return f", repeated over {n} vectors"
    return f", averaged into {n} vector{'s' * (n != 1)}"


def attach_rows(model, spec: FamilySpec, cfg, stored) -> Conditioner:
    """The new rows in every encoder, from `stored` (the init embedding, or None: the init text)."""
    rows = []
    for key, tokenizer, text_encoder in model.encoders:
        init = init_vectors(cfg, spec, key, tokenizer, text_encoder, stored)
        rows.append(attach(key, tokenizer, text_encoder, cfg.name, init.to(text_encoder.device)))
    for attr, encoder_rows in zip(("tokenizer", "tokenizer_2"), rows, strict=False):
        setattr(model.pipe, attr, encoder_rows.tokenizer)  # previews tokenise the new tokens
    return Conditioner(family="sdxl" if spec.name == "sdxl" else "single", rows=rows)
