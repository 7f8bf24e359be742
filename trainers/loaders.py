"""The three ways a pipeline is read from disk or the hub: a diffusers folder, a hub id and a single-file
checkpoint, each quiet while it loads and failing with a ModelLoadError that says what to do.

`trainers.models.load_model` picks one of them from what `--model` names; this module does not know about
families or the demo world.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from embeddings.errors import EmbeddingFormatError, TokensmithError, first_line
from embeddings.formats.pickled import load_pickle
from trainers.network import hub_unreachable, network_error, offline_by_choice


class ModelLoadError(TokensmithError):
    """A model that could not be found or loaded; the message says what to do."""


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide diffusers'/transformers' per-component loading bars: loading is one step to the user.

    diffusers' warnings are hidden too (unless DIFFUSERS_VERBOSITY asks for them): a single-file load
    warns about fp32 modules it then handles, and offline it announces a download it cannot make, before
    tokensmith's own error says what to do.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    level = diffusers_logging.get_verbosity()
    if not os.environ.get("DIFFUSERS_VERBOSITY"):
        diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
        diffusers_logging.set_verbosity(level)


def resolve_image_processors() -> None:
    """Look up the image processors diffusers imports, with transformers' warnings off.

    Without torchvision, transformers falls back to its PIL image processors for CLIP and SigLIP (the ones an
    SD pipeline's feature extractor uses anyway). The first lookup of each name warns that it does; the
    warning tells a tokensmith user nothing they can act on. After this lookup transformers keeps the fallback
    and no later import of the names warns."""
    import transformers
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        for name in ("CLIPImageProcessor", "SiglipImageProcessor"):
            getattr(transformers, name, None)
    finally:
        transformers_logging.set_verbosity(level)


def _pipeline_class(model_index: dict) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if index_is_sdxl(model_index) else StableDiffusionPipeline


def _pipeline_kwargs(cls: Any) -> dict[str, Any]:
    """What loading `cls` needs beyond the weights: an SD 1.x/2.x pipeline loads without its safety checker
    (a separate model that many folders and checkpoints lack, and that would blank the user's own previews
    and samples); SDXL's pipeline has none."""
    from diffusers import StableDiffusionPipeline

    if cls is not StableDiffusionPipeline:
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def index_is_sdxl(model_index: dict) -> bool:
    """Whether a model_index.json names a second text encoder (SDXL)."""
    return "text_encoder_2" in model_index and model_index["text_encoder_2"] not in (None, [None, None])


def load_folder(folder: Path, dtype: torch.dtype) -> Any:
    """The diffusers pipeline saved in `folder` (SD or SDXL, by its model_index.json), from local files only;
    a ModelLoadError that says what is missing or damaged otherwise."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelLoadError(
            f"{folder} is not a diffusers model folder (no model_index.json): give a folder written by "
            "`save_pretrained`, a single-file checkpoint, or a hub id"
        )
    try:
        model_index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{index_path} is unreadable ({exc}): re-copy or re-download the model") from exc
    cls = _pipeline_class(model_index)
    try:
        with _quiet_loading():
            pipe = cls.from_pretrained(
                str(folder), dtype=dtype, local_files_only=True, **_pipeline_kwargs(cls)
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"could not load the diffusers model in {folder}: {first_line(exc)} "
            "(is a component folder or weight file missing or truncated? re-copy the model)"
        ) from exc
    return pipe


def load_hub(repo_id: str, dtype: torch.dtype) -> Any:
    """The pipeline of hub id `repo_id`: downloaded when the hub is reachable, else from the local cache alone
    (also under HF_HUB_OFFLINE=1); a ModelLoadError telling offline, unreachable and wrong ids apart."""
    from diffusers import DiffusionPipeline

    offline = offline_by_choice()
    unreachable = None if offline else hub_unreachable()
    local_only = offline or unreachable is not None  # the cache alone, as huggingface_hub falls back to
    try:
        with warnings.catch_warnings():  # diffusers passes hf_hub_download an argument it deprecated
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
            index = DiffusionPipeline.load_config(repo_id, local_files_only=local_only)
        cls = _pipeline_class(index)
        with _quiet_loading():
            kwargs = _pipeline_kwargs(cls)
            return cls.from_pretrained(repo_id, dtype=dtype, local_files_only=local_only, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if offline:
            raise ModelLoadError(
                f"hub model {repo_id!r} is not in the local cache and HF_HUB_OFFLINE=1: download it on a "
                f"machine with a network (`huggingface-cli download {repo_id}`) or pass a local folder"
            ) from exc
        network = unreachable or network_error(exc)
        if network:
            raise ModelLoadError(
                f"cannot reach the Hugging Face hub for {repo_id!r} ({network}) and it is not in the local "
                "cache: connect to a network, or download it elsewhere (`hf download "
                f"{repo_id}`) and pass its folder, or set HF_HUB_OFFLINE=1 to use the cache only"
            ) from exc
        raise ModelLoadError(
            f"could not load hub model {repo_id!r}: {first_line(exc)} (check the id, your network and any "
            "access token: `hf auth login`)"
        ) from exc


def load_single_file(path: Path, dtype: torch.dtype, config: str | None) -> Any:
    """The pipeline in a single-file checkpoint (.safetensors/.ckpt), SD or SDXL by its keys; its configs
    come from `config` (a diffusers folder of the same architecture) or the hub (network or cache)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    keys = _checkpoint_keys(path)
    _check_holds_a_model(path, keys)
    cls = StableDiffusionXLPipeline if looks_sdxl(path, config, keys) else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"torch_dtype": dtype, **_pipeline_kwargs(cls)}  # from_single_file: torch_dtype
    if config is not None:
        kwargs["config"] = config
    local_only = offline_by_choice() or hub_unreachable() is not None
    try:
        with _quiet_loading():
            return cls.from_single_file(str(path), local_files_only=local_only, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as exc:
        hint = (
            "single-file loading needs the model's configs: from the Hugging Face hub (network or cache), or "
            "pass a diffusers folder of the same architecture as `config` (CLI: --model-config DIR)"
        )
        raise ModelLoadError(f"could not load checkpoint {path}: {first_line(exc)}; {hint}") from exc


def looks_sdxl(path: Path, config: str | None = None, keys: list[str] | None = None) -> bool:
    """SDXL or not: the config folder's pipeline class when one is given, else whether the checkpoint has a
    second text encoder (conditioner.embedders.1); only key names are read (a .ckpt is memory-mapped), or
    `keys` when the caller has read them."""
    index = Path(config).expanduser() / "model_index.json" if config else None
    if index is not None and index.is_file():
        try:
            return "XL" in str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
        except (OSError, ValueError):
            pass  # an unreadable config is diffusers' to report; fall back to the keys
    keys = _checkpoint_keys(path) if keys is None else keys
    return any(key.startswith("conditioner.embedders.1.") for key in keys)


# Top-level keys of the embedding files people pass as --model by mistake: tokensmith's and kohya's
# safetensors, and A1111's .pt dict (diffusers' learned_embeds.* hold '<token>' keys).
EMBEDDING_KEYS = {"emb_params", "clip_l", "clip_g", "string_to_param", "string_to_token", "name", "step"}
EMBEDDING_KEYS |= {"sd_checkpoint", "sd_checkpoint_name"}


def _check_holds_a_model(path: Path, keys: list[str]) -> None:
    """ModelLoadError, in a moment, for a file without the UNet every SD/SDXL checkpoint holds
    (model.diffusion_model.*): an embedding, a LoRA or a VAE given as --model. diffusers would otherwise
    fail later, blaming its configs or the network."""
    if any(key.startswith("model.diffusion_model.") for key in keys):
        return
    if keys and all(key in EMBEDDING_KEYS or key.startswith("<") for key in keys):
        raise ModelLoadError(
            f"{path} is an embedding file, not a model: import it with `tokensmith import {path}` and write "
            "its <name> in prompts; --model takes a diffusers folder, a hub id or a full single-file "
            "checkpoint"
        )
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "") if keys else "no tensors"
    raise ModelLoadError(
        f"{path} is not a Stable Diffusion checkpoint: it holds no UNet weights (model.diffusion_model.*; "
        f"it has {shown}), so it may be a LoRA, a VAE or an embedding; --model takes a diffusers folder, a "
        "hub id or a full single-file checkpoint"
    )


def _checkpoint_keys(path: Path) -> list[str]:
    """The tensor names of a single-file checkpoint; .ckpt/.pt/.bin are read with weights_only=True."""
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                return list(handle.keys())
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            message = f"{path} is not a readable safetensors file ({exc}): re-download it"
            raise ModelLoadError(message) from exc
    try:
        state = load_pickle(path, mmap=True)  # weights_only=True: a .ckpt that would run code is refused
    except EmbeddingFormatError as exc:
        raise ModelLoadError(
            f"{exc}; a .ckpt must hold tensors only (it is read with weights_only=True): convert it to "
            ".safetensors or re-download it"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return [str(key) for key in state] if isinstance(state, dict) else []
